"""Conversations in the message-list form chat templates and TRL's conversational datasets take."""


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]
