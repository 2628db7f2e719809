"""HTTP routes: transport only; the logic lives in api.serving and friends."""
