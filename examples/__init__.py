"""Small web apps built on the producers; each is tested end to end."""
