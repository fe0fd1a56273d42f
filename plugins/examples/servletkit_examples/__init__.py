"""Example plugins shipped with servletkit: the ones `servletkit dev` enables."""
