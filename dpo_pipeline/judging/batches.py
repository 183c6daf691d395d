"""`judge.mode: batch`: the uncached requests through the Message Batches API, at `judge.batch_discount`.

As many batches as the API's limits need (100,000 requests or 256 MB each, limits.py; `judge.batch_max_requests`
lowers the first). Each batch id is recorded the moment it is created, so a killed run's batches are polled
by the next run, which creates only the rest; all are polled at once and each one's results are folded into
the cache as it ends. Answers that fail validation, and requests that errored or expired, are left uncached
for the online pass. `judge` below is the AnthropicJudge sending them (its cache, budget, parse and cost).
"""

from __future__ import annotations

import asyncio

from dpo_pipeline.errors import UserError
from dpo_pipeline.judging.limits import split_batches
from dpo_pipeline.judging.online import BudgetExceeded
from dpo_pipeline.progress import progress as progress_bar


async def send_batches(judge, client, todo: dict[str, dict]) -> None:
    """Poll the batches an interrupted run created, create the rest, and fold each one's answers into the
    cache as it ends. A request that fails stops the run; the batches created so far stay recorded and open,
    so a rerun polls them."""
    from anthropic import APIError

    resumed = judge.cache.open_batches(judge.cfg.model)
    submitted = {k for _, keys in resumed for k in keys}
    chunks = split_batches({k: b for k, b in todo.items() if k not in submitted}, judge.cfg.batch_max_requests)
    # A batch request is one request at the batch price: its worst case is its whole token limit.
    worst = sum(judge.cost(*judge._tokens(b), batch=True) for chunk in chunks for b in chunk.values())
    if chunks and worst > judge.budget.room():
        raise BudgetExceeded(f"judge.max_cost_usd (${judge.cfg.max_cost_usd:.2f}) is below these batches' "
                             f"worst case (${worst:.2f}); raise it to submit")
    polls: list[asyncio.Task] = []
    with progress_bar("calls") as progress:
        for batch_id, keys in resumed:
            if not await exists(judge, client, batch_id, len(keys)):
                continue
            print(f"resuming message batch {batch_id}")
            polls.append(asyncio.create_task(collect(judge, client, batch_id, todo, progress)))
        try:
            for i, chunk in enumerate(chunks, 1):
                batch = await client.messages.batches.create(
                    requests=[{"custom_id": k, "params": b} for k, b in chunk.items()])
                judge.cache.add_batch(batch.id, judge.cfg.model, list(chunk))
                print(f"submitted message batch {i}/{len(chunks)} {batch.id} ({len(chunk)} requests)")
                polls.append(asyncio.create_task(collect(judge, client, batch.id, todo, progress)))
            await asyncio.gather(*polls)
        except APIError as e:
            raise judge.translate(e) from None
        finally:  # after a failure, stop polling the others; they stay open for the rerun
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)


async def exists(judge, client, batch_id: str, n: int) -> bool:
    """Whether a recorded batch is still there. The API keeps a batch's results 29 days and shows a batch
    only to its workspace: a gone one stops the run, naming it, unless judge.resubmit_lost_batches lets its
    unanswered requests go again (in a new batch, within the budget)."""
    from anthropic import NotFoundError

    try:
        await client.messages.batches.retrieve(batch_id)
        return True
    except NotFoundError:
        if not judge.cfg.resubmit_lost_batches:
            raise UserError(f"judge: message batch {batch_id} ({n} requests) is gone from the API (results "
                            "are kept 29 days; a batch is seen only from its own workspace): rerun with "
                            "-S judge.resubmit_lost_batches=true to send its unanswered requests again") from None
        print(f"message batch {batch_id} is gone from the API: its unanswered requests are sent again")
        judge.cache.close_batch(batch_id, status="lost")
        return False


async def collect(judge, client, batch_id: str, bodies: dict[str, dict], progress) -> None:
    """Poll one batch until it ends, then cache its answers; errored or expired requests are left for the
    online pass. An answer for a request not in `bodies` (another job's, from an interrupted run) is cached
    too: it was paid for."""
    bar = progress.add_task(f"batch {batch_id}", total=None)
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        c = batch.request_counts
        done = c.succeeded + c.errored + c.canceled + c.expired
        progress.update(bar, total=done + c.processing, completed=done)
        if batch.processing_status == "ended":
            break
        await asyncio.sleep(judge.cfg.batch_poll_s)
    async for result in await client.messages.batches.results(batch_id):
        key = result.custom_id
        if result.result.type != "succeeded" or judge.cache.get(key) is not None:
            continue  # errored or expired: sent online next; or already folded
        message = result.result.message
        answer = judge.parse(bodies.get(key), message)
        usd = judge.cost(message.usage.input_tokens, message.usage.output_tokens, batch=True,
                         model=message.model if message.model in judge.cfg.prices else None)
        judge.budget.pay(usd)
        judge.cache.log_call(key, judge.cfg.model, "batch", answer is not None, message.usage.input_tokens,
                             message.usage.output_tokens, usd, 0.0,
                             error=None if answer is not None else message.stop_reason)
        if answer is not None:
            judge.cache.put(key, judge.name, judge.cfg.model, answer, message.usage.input_tokens,
                            message.usage.output_tokens, usd)
    judge.cache.close_batch(batch_id)
