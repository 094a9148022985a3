"""mobillm: fine-tune LLMs on mobile and edge devices with a server's help (server-assisted side tuning)."""

__version__ = "0.1.0"

#: The logger of the one line each long step prints (loading a backbone, …): the CLI shows its messages bare.
PROGRESS_LOGGER = "mobillm.progress"
