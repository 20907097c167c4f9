"""Where a user's blobs live in the adapter store; everything of a user sits under one prefix."""


def user_prefix(user_id: str) -> str:
    return f"users/{user_id}"


def adapter_key(user_id: str, adapter_id: str) -> str:
    return f"{user_prefix(user_id)}/adapters/{adapter_id}.safetensors"


def recording_key(user_id: str, recording_id: str) -> str:
    """Recordings stored before they were a resource of their own sit under
    `recordings/<job id>/<position>.flac`; each row keeps its key."""
    return f"{user_prefix(user_id)}/recordings/{recording_id}.flac"


def bank_key(bank_id: str) -> str:
    """Expert banks belong to no user: deleting a user leaves them (see
    `ExpertBankRepository.withdraw` for what happens instead)."""
    return f"expert-banks/{bank_id}.safetensors"
