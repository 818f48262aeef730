"""The relay core: frames (pure), rooms and routing (pure), the Hub, and its transports."""
