"""mobillm: fine-tune LLMs on mobile and edge devices with a server's help (server-assisted side tuning)."""

__version__ = "0.1.0"
