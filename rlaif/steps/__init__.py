"""Pipeline steps: small classes with declared columns and one hook. The registry maps names to classes."""
