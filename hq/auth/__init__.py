"""Who an agent is: passwords, tokens, identity, login sessions, limits, clearance, agent administration."""
