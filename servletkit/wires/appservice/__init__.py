"""The appservice wire: the Matrix Application Service API, served by the container
(:mod:`.wire`), and the client-server API client the plugins act through (:mod:`.homeserver`)."""
