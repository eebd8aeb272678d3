"""Turns a batch of logits into next tokens: repetition penalty, temperature, top-k, top-p, seeds.

Penalty, scaling and truncation are batched over rows with per-row parameters. Only the final draw
loops over the rows that sample, because a seeded request owns its own random generator (so its
output does not depend on what else is in the batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jijian.serve.request import Request


class Sampler:
    """Picks one token per row; keeps each seeded request's generator across steps."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.generators: dict[str, torch.Generator] = {}
        self.shared_generator = torch.Generator(device=self.device)
        self.shared_generator.seed()
        self.failures: dict[str, Exception] = {}  # request id -> why sampling its row failed this step

    def forget(self, request_id: str) -> None:
        """Drop a finished request's generator."""
        self.generators.pop(request_id, None)

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, requests: Sequence[Request]) -> list[int]:
        """Next token of each request, given its row of logits (rows, vocab)."""
        logits = logits.float()
        params = [r.params for r in requests]
        if any(p.repetition_penalty != 1.0 for p in params):
            logits = self._apply_repetition_penalty(logits, requests)
        chosen = torch.argmax(logits, dim=-1)
        sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
        if not sampled_rows:
            return chosen.tolist()
        rows = torch.tensor(sampled_rows, dtype=torch.long, device=logits.device)
        sub = logits[rows]
        temperature = torch.tensor([params[i].temperature for i in sampled_rows], device=logits.device)
        sub = sub / temperature[:, None]
        sub = self._truncate(sub, [params[i].top_k for i in sampled_rows], [params[i].top_p for i in sampled_rows])
        probs = torch.softmax(sub, dim=-1)
        for j, i in enumerate(sampled_rows):
            try:
                generator = self._generator(requests[i])
                chosen[i] = torch.multinomial(probs[j], 1, generator=generator)[0]
            except (RuntimeError, ValueError, OverflowError) as exc:  # this request fails; the rest are sampled
                self.failures[requests[i].request_id] = exc
        return chosen.tolist()

    def _generator(self, request: Request) -> torch.Generator:
        seed = request.params.seed
        if seed is None:
            return self.shared_generator
        generator = self.generators.get(request.request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self.generators[request.request_id] = generator
        return generator

    @staticmethod
    def _apply_repetition_penalty(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        # CTRL-style, as in transformers: seen tokens' positive logits are divided, negative multiplied.
        histories = [r.all_token_ids for r in requests]
        width = max(len(h) for h in histories)
        seen = torch.full((len(requests), width), -1, dtype=torch.long)
        for i, history in enumerate(histories):
            seen[i, : len(history)] = torch.as_tensor(history, dtype=torch.long)
        seen = seen.to(logits.device)
        present = seen >= 0
        index = seen.clamp(min=0)
        penalty = torch.tensor([r.params.repetition_penalty for r in requests], device=logits.device)[:, None]
        values = logits.gather(1, index)
        penalised = torch.where(values > 0, values / penalty, values * penalty)
        # Padding entries repeat the row's first token and its penalised value, so every write agrees.
        out = logits.clone()
        out.scatter_(1, torch.where(present, index, index[:, :1]), torch.where(present, penalised, penalised[:, :1]))
        return out

    @staticmethod
    def _truncate(logits: torch.Tensor, top_k: Sequence[int], top_p: Sequence[float]) -> torch.Tensor:
        vocab = logits.shape[-1]
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        k = torch.tensor([kk if kk > 0 else vocab for kk in top_k], device=logits.device)[:, None]
        drop = ranks >= k
        p = torch.tensor(list(top_p), device=logits.device)[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        # Keep the smallest prefix whose mass reaches p: drop a token if the mass before it already does.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop |= mass_before >= p
        drop[:, 0] = False
        masked = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(1, order, masked)
