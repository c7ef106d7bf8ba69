"""``eeszt-gw console``: the operators' web console (status, dead letters, audit), served by
uvicorn; users and roles in a JSON users file (:mod:`.users`). See docs/console.md."""
