"""PQM Server: personalised speech recognition over one shared NF4-quantised Whisper."""

__version__ = "0.1.0"
