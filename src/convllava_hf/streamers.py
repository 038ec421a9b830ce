"""transformers' text streamers that also record when each new token arrives, for time to first token and tokens/s."""

import time

from transformers import TextIteratorStreamer, TextStreamer


class _TokenTimes:
    """
    Makes a `TextStreamer` skip the prompt and record each new token's id (`token_ids`) and arrival (`token_times`).
    Only `put` is overridden: the streamers hand on text, which cannot count tokens (a token may release no text, `end`
    releases text of its own), and an iterator's reader sees the text later than the generating thread made it.
    """

    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer, skip_prompt=True, **kwargs)
        self.token_times: list[float] = []
        self.token_ids: list[int] = []

    def put(self, value) -> None:
        if not self.next_tokens_are_prompt:
            self.token_times.append(time.perf_counter())
            self.token_ids.extend(value.reshape(-1).tolist())
        super().put(value)

    def timings(self, started_at: float) -> tuple[float | None, float | None]:
        """(seconds from `started_at` to the first new token, new tokens per second after it), each None until known."""
        times = list(self.token_times)  # a copy: the generating thread may append meanwhile
        first = times[0] - started_at if times else None
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        return first, rate


class TimedTextStreamer(_TokenTimes, TextStreamer):
    """`TextStreamer` (prints the answer as it is generated) with `token_times`."""


class TimedTextIteratorStreamer(_TokenTimes, TextIteratorStreamer):
    """`TextIteratorStreamer` (the answer's text, read from another thread) with `token_times`."""
