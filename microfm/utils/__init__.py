"""Small helpers shared across microfm (file IO, environment facts)."""
