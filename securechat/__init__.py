"""securechat: a self-hosted, end-to-end encrypted group chat for the LAN."""

__version__ = "0.1.0"
