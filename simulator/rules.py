"""Who may write what: the simulator's authorisation rules beyond the permission table.

Called by :meth:`simulator.app.Simulator._service` after the signature and the SAML token are
checked, before the operation is validated and applied. Pure checks on facts already verified;
they raise :class:`~simulator.soapio.SoapFault` and touch nothing. The record-level rules (who may
revoke a prescription) need the store and live in :mod:`simulator.services`.

- the permission table (:mod:`schemas.permissions`) ........... PERMISSION_DENIED (AUTHZ-001)
- a doctor writes patient data (eRecept, eBeutalo, eProfil)
  only with a two-factor login (MobilToken or eSZIG card): decree
  39/2016 EMMI asks sector users for multi-factor login before
  they write patient data; a password alone is one factor ...... TWO_FACTOR_REQUIRED (AUTHZ-002)
- a referral's referrer stamp is the token's doctor .......... REFERRER_NOT_TOKEN_DOCTOR (AUTHZ-004)

A query by idempotency key is not a write: the table allows it to whoever may write, and the
two-factor rule does not apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from schemas.permissions import Access, Role, is_allowed
from schemas.soap import FaultCode

from .soapio import SoapFault

#: services that hold patient data a doctor writes
PATIENT_DATA_SERVICES = frozenset({"eRecept", "eBeutalo", "eProfil"})
#: login methods with two factors: the MobilToken code (phone + user id) and the eSZIG card + PIN
TWO_FACTOR_METHODS = frozenset({"mobiltoken", "eszig"})
#: the longest wsu:Timestamp lifetime (Expires - Created) the verifier accepts, by default
DEFAULT_MAX_TIMESTAMP_LIFETIME_S = 900.0
QUERY_OP = "lekerdezesKulcsAlapjan"


@dataclass(frozen=True, slots=True)
class Rules:
    """The switchable rules (start values from the settings; ``PATCH /admin/rules`` at run time)."""

    require_two_factor: bool = True
    max_timestamp_lifetime_s: float = DEFAULT_MAX_TIMESTAMP_LIFETIME_S

    def as_json(self) -> dict[str, object]:
        return {"require_two_factor": self.require_two_factor,
                "max_timestamp_lifetime_s": self.max_timestamp_lifetime_s}

    def changed(self, changes: object) -> Rules:
        """A copy with ``changes`` (a JSON object) applied. Raises ValueError naming the field."""
        if not isinstance(changes, dict):
            raise ValueError("body: expected a JSON object")
        unknown = sorted(set(changes) - {"require_two_factor", "max_timestamp_lifetime_s"})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown rule; the rules are require_two_factor and "
                             "max_timestamp_lifetime_s")
        two_factor = changes.get("require_two_factor", self.require_two_factor)
        if not isinstance(two_factor, bool):
            raise ValueError("require_two_factor: must be true or false")
        lifetime = changes.get("max_timestamp_lifetime_s", self.max_timestamp_lifetime_s)
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            raise ValueError("max_timestamp_lifetime_s: must be a number of seconds above 0")
        return Rules(require_two_factor=two_factor, max_timestamp_lifetime_s=float(lifetime))


def stamp_of(subject: str) -> str:
    """A doctor's stamp number from the token subject: ``O10001`` -> ``10001``."""
    return subject[1:] if subject[:1].isalpha() else subject


def authorize(*, service: str, op_name: str, role: str, method: str, rules: Rules) -> None:
    """The permission table and the two-factor rule, for one call. Raises SoapFault."""
    if not is_allowed(service, Access.WRITE, role):
        raise SoapFault(FaultCode.PERMISSION_DENIED, f"a {role} token may not write to {service}")
    if (op_name != QUERY_OP and rules.require_two_factor and role == Role.DOCTOR.value
            and service in PATIENT_DATA_SERVICES and method not in TWO_FACTOR_METHODS):
        raise SoapFault(
            FaultCode.TWO_FACTOR_REQUIRED,
            f"a doctor token from a {method} login may not write patient data to {service}: "
            "decree 39/2016 EMMI asks sector users for a multi-factor login before they write "
            "patient data; log in with MobilToken or the eSZIG card",
            field="AuthenticationMethod")


def check_referrer(op: etree._Element, *, namespace: str, subject: str) -> None:
    """beutaloRogzites: the referrer stamp must be the stamp of the doctor whose token it is."""
    stamp = op.findtext(f"{{{namespace}}}referrerStamp")
    if stamp != stamp_of(subject):
        raise SoapFault(
            FaultCode.REFERRER_NOT_TOKEN_DOCTOR,
            f"referrerStamp {stamp} is not the stamp of the token's doctor {subject}: a doctor "
            "refers in their own name only",
            field="referrerStamp")
