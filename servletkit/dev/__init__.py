"""``servletkit dev`` (:mod:`.command`) and the Synapse it embeds (:mod:`.embedded_synapse`).

The command's parts: its state folder (:mod:`.state`), how it wires the container to
Synapse (:mod:`.wiring`), what its terminal shows (:mod:`.terminal`), how it fails
(:mod:`.errors`).
"""
