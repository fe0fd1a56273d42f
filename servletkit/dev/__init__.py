"""``servletkit dev`` (:mod:`.command`) and the Synapse it embeds (:mod:`.embedded_synapse`)."""
