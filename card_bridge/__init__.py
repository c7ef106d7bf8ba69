"""The workstation daemon: answers eSZIG and MobilToken login challenges for one workstation.

It consumes only its own workstation's queue, accepts only challenges signed by the gateway's
pinned challenge key, and logs the doctor in the way this workstation is set up
(``--login-method``): the eSZIG card (the doctor types the PIN, the card signs the eID package's
nonce through PC/SC) or MobilToken (the doctor types the code of the MobilToken app). Either way
the eID server answers with an rID, and the bridge answers on the broker with that rID. The PIN
and the code never leave this process except to the card and to the eID server.
"""
