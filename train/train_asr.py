"""Trains the demo recognizer in short resumable runs, each stopping before a wall-clock budget.

    python -m train.train_asr --data .data/asr/a .data/asr/b --heldout .data/asr/heldout \
        --run RUN_DIR --minutes 8.5 --total-minutes 11

The first run trains the tokenizer on the train transcripts and starts the model from scratch;
later runs with the same RUN_DIR resume from `RUN_DIR/checkpoint.pt` (weights, AdamW state,
step, training seconds so far). `--init MODEL_DIR` starts a new run from an exported model
instead (training that spans machines, where only the export came back). The learning rate warms
up over the first steps, then follows a cosine over *training time* (--total-minutes across all
runs), so runs of any length add up to one schedule. The loss is the answer's cross entropy plus
--ctc-weight times an auxiliary CTC loss on the audio tokens (train/model.py). Each run logs the
train losses, measures greedy WER on held-out utterances every --eval-every steps and at its
end, saves the checkpoint, and exports the model to RUN_DIR/model (the released layout, bf16).
The batches (and the synthesized speech, --synth-workers) come from train/feed.py's process.

On CUDA it trains under bf16 autocast with TF32 matmuls; on a CPU in float32 (the smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from engine.models.qwen3_asr import Qwen3ASR
from engine.tokenizer import Tokenizer
from engine.weights import load_safetensors
from train.data import Utterance, load_manifests, read_manifest
from train.export import export
from train.feed import Feed, FeedConfig
from train.make_data import normalize_text
from train.model import Batcher, Prepared, build_model, config_json
from train.tokenizer import TOKENIZER_FILES
from train.wer import wer

CHECKPOINT = "checkpoint.pt"


def lr_at(step: int, progress: float, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up over `warmup` steps, then cosine from peak to floor * peak over progress
    (the share of the total training time spent, 0..1)."""
    warm = min(1.0, (step + 1) / warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak * warm * (floor + (1 - floor) * cosine)


def split_cores(trainer: int) -> tuple[int, ...]:
    """Keeps the first `trainer` CPUs this process may use for it and returns the others, for
    the feed and its synthesis workers (all of them when there are too few to split), so that
    the workers never take the cores that issue the step's ~2,000 operator calls."""
    allowed = sorted(os.sched_getaffinity(0))
    if trainer <= 0 or len(allowed) <= trainer:
        return ()
    os.sched_setaffinity(0, allowed[:trainer])
    return tuple(allowed[trainer:])


def load_checkpoint(run: Path, device: str) -> tuple[torch.nn.Module, dict, dict]:
    """(model, config.json dict, the rest of the state) from RUN_DIR/checkpoint.pt."""
    state = torch.load(run / CHECKPOINT, map_location=device, weights_only=True)
    config = json.loads(state.pop("config"))
    model = build_model(config, device)
    model.load_state_dict(state.pop("model"))
    return model, config, state


def save_checkpoint(run: Path, model, config: dict, optimizer, state: dict) -> None:
    tmp = run / (CHECKPOINT + ".tmp")
    torch.save(
        {
            "config": json.dumps(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            **state,
        },
        tmp,
    )
    tmp.replace(run / CHECKPOINT)  # a run killed while saving keeps the previous checkpoint


def start_from(folder: Path, tokenizer_dir: Path, device: str) -> tuple[Qwen3ASR, dict, Tokenizer]:
    """A new run's model, config.json dict and tokenizer from an exported model folder: training
    goes on where an earlier run (on another machine, its checkpoint gone) left off."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None)  # the export's; training keeps float32 weights
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(folder / name, tokenizer_dir / name)
    model = build_model(config, device)
    model.load_weights({k: v.float() for k, v in load_safetensors(folder, device).items()})
    return model, config, Tokenizer.from_folder(tokenizer_dir)


def clipped_step(model: torch.nn.Module, optimizer, max_norm: float = 1.0) -> bool:
    """Clips the gradient to max_norm and steps, unless it is not finite: then the step is
    skipped (False). One bad batch must not end a run, and clipping a NaN gradient would
    poison every weight."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if not torch.isfinite(norm):
        return False
    optimizer.step()
    return True


def train_step(
    batcher: Batcher, optimizer, ready: Prepared, ctc_weight: float, device: torch.device
) -> tuple[dict[str, torch.Tensor], bool]:
    """One optimizer step on a prepared batch: (the loss parts, whether it stepped). On CUDA
    under bf16 autocast."""
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        parts = batcher.losses(ready)
        loss = parts["ce"] + ctc_weight * parts["ctc"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return parts, clipped_step(batcher.model, optimizer)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (fused on CUDA)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        fused=next(model.parameters()).is_cuda,
    )


def held_out_wer(batcher: Batcher, utts: list[Utterance], batch: int = 64) -> tuple[float, list]:
    batcher.model.eval()
    pairs = []
    for i in range(0, len(utts), batch):
        part = utts[i : i + batch]
        hyps = batcher.transcribe([u.audio for u in part])
        pairs += [(u.text, h) for u, h in zip(part, hyps, strict=True)]
    batcher.model.train()
    return wer(pairs), pairs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="*", default=[], help="folders with train.jsonl")
    ap.add_argument(
        "--synth-workers", type=int, default=0, help="processes making fresh speech (0: none)"
    )
    ap.add_argument(
        "--synth-hours",
        type=float,
        default=100.0,
        help="newest synthesized audio kept (float16 in memory: 100 h is 11.5 GB)",
    )
    ap.add_argument(
        "--trainer-cores",
        type=int,
        default=2,
        help="CPUs kept for the trainer's process when synthesizing (0: shared with the workers)",
    )
    ap.add_argument("--synth-start", type=float, default=5.0, help="hours made before step 1")
    ap.add_argument("--heldout", type=Path, help="folder with heldout.jsonl")
    ap.add_argument("--run", type=Path, required=True, help="checkpoint and export folder")
    ap.add_argument("--preset", default="default", help="model size (new runs only)")
    ap.add_argument(
        "--init",
        type=Path,
        help="an exported model folder a new run starts from (its weights, "
        "config and tokenizer; the optimizer starts afresh)",
    )
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of this run")
    ap.add_argument("--total-minutes", type=float, default=25.0, help="training time, all runs")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    ap.add_argument("--ctc-weight", type=float, default=0.3, help="auxiliary CTC loss weight")
    ap.add_argument("--batch-seconds", type=float, default=800.0, help="padded audio per batch")
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-utterances", type=int, default=256)
    ap.add_argument("--limit", type=int, help="utterances per manifest (smoke runs, tests)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (tests)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.data and not a.synth_workers:
        ap.error("give --data, --synth-workers or both")
    t_start = time.time()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    feed_cores: tuple[int, ...] = ()
    if a.synth_workers:
        # With every core busy, an OpenMP team as wide as the machine waits on descheduled
        # threads at each CPU op of the step (measured: 10x slower steps on 16 cores).
        torch.set_num_threads(2)
        feed_cores = split_cores(a.trainer_cores)
    a.run.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = a.run / "tokenizer"

    resumed = (a.run / CHECKPOINT).exists()
    state: dict = {"step": 0, "train_seconds": 0.0, "epoch": 0, "runs": 0, "log": []}
    if resumed:
        model, config, state = load_checkpoint(a.run, a.device)
        print(f"resumed at step {state['step']}", flush=True)
    elif a.init:
        model, config, _ = start_from(a.init, tokenizer_dir, a.device)
        state["init"] = str(a.init)
    heldout = load_manifests([a.heldout / "heldout.jsonl"], a.eval_utterances) if a.heldout else []
    reserved = (
        frozenset(normalize_text(r["text"]) for r in read_manifest(a.heldout / "heldout.jsonl"))
        if a.heldout
        else frozenset()
    )
    feed = Feed(
        FeedConfig(
            tokenizer_dir,
            a.batch_seconds,
            seed=a.seed * 1000 + state["epoch"],
            data=tuple(a.data),
            limit=a.limit,
            synth_workers=a.synth_workers,
            synth_seed=a.seed * 1000 + state["runs"],  # each run makes other utterances
            synth_hours=a.synth_hours,
            synth_start=a.synth_start,
            reserved=reserved,
            cores=feed_cores,
        )
    )
    with feed:
        c = feed.corpus
        if a.synth_workers:
            print(f"synthesized {c.synthesized_hours:.2f} h in {c.seconds:.0f} s", flush=True)
        print(
            f"data: {c.utterances} utterances, {c.hours:.2f} h; held-out {len(heldout)}", flush=True
        )
        tokenizer = Tokenizer.from_folder(tokenizer_dir)  # the feed wrote it if it was new
        if not resumed and not a.init:
            config = config_json(a.preset, tokenizer)
            model = build_model(config, a.device)
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {params / 1e6:.2f} M parameters", flush=True)
        optimizer = make_optimizer(model, a.lr)
        if "optimizer" in state:
            optimizer.load_state_dict(state.pop("optimizer"))
        batcher = Batcher(model, tokenizer)
        model.train()
        made, epochs = train(a, batcher, optimizer, feed, heldout, state, t_start, cuda)
    state["synth_utterances"] = state.get("synth_utterances", 0) + made
    state["epoch"] += epochs
    state["runs"] += 1
    evaluate(batcher, heldout, state)
    save_checkpoint(a.run, model, config, optimizer, state)
    size = export(model, config, tokenizer_dir, a.run / "model")
    print(
        f"saved step {state['step']}; model {size / 2**20:.2f} MiB; "
        f"run {time.time() - t_start:.0f} s",
        flush=True,
    )
    return state


def evaluate(batcher: Batcher, heldout: list[Utterance], state: dict) -> None:
    """Held-out greedy WER into the log, once per step."""
    if heldout and not any(
        e.get("heldout_wer") is not None and e["step"] == state["step"] for e in state["log"]
    ):
        score, pairs = held_out_wer(batcher, heldout)
        state["log"].append({"step": state["step"], "heldout_wer": score})
        print(f"step {state['step']}: held-out WER {score:.3f} on {len(pairs)}", flush=True)
        for ref, hyp in pairs[:3]:
            print(f"  ref: {ref}\n  hyp: {hyp}", flush=True)


def train(
    a: argparse.Namespace,
    batcher: Batcher,
    optimizer: torch.optim.Optimizer,
    feed: Feed,
    heldout: list[Utterance],
    state: dict,
    started: float,
    cuda: bool,
) -> tuple[int, int]:
    """Steps on the feed's batches until the deadline (less the time the final evaluation,
    checkpoint and export need) or --max-steps. Returns (utterances synthesized, epochs
    begun) for the state."""
    reserve = 20.0 + (0.15 * len(heldout) if cuda else 1.0 * len(heldout))
    deadline = started + a.minutes * 60
    device = batcher.model.decoder.lm_head.weight.device
    losses: list[list[float]] = []
    made = epoch = 0
    waited = 0.0  # seconds the trainer waited for a batch since the last log line
    t0 = logged = time.time()  # training time runs from t0, data waits in, evaluations out
    cpu = time.process_time()  # the trainer's CPU time (a CUDA sync spins: waits count too)
    for batch in feed:
        waited += time.time() - t0
        made, epoch = batch.synthesized, batch.epoch
        if time.time() > deadline - reserve or state["step"] == a.max_steps:
            break
        progress = state["train_seconds"] / (a.total_minutes * 60)
        lr = lr_at(state["step"], progress, a.lr, a.warmup)
        for g in optimizer.param_groups:
            g["lr"] = lr
        parts, stepped = train_step(batcher, optimizer, batch.ready, a.ctc_weight, device)
        state["train_seconds"] += time.time() - t0
        t0 = time.time()  # a skipped step's time is training time too, not a wait for data
        if not stepped:
            state["skipped"] = state.get("skipped", 0) + 1
            print(
                f"step {state['step']}: skipped, non-finite gradient (ce {parts['ce']:.3f}, "
                f"ctc {parts['ctc']:.3f}; {len(batch.ready.answers)} utterances of "
                f"{batch.shortest:.2f}-{batch.longest:.2f} s)",
                flush=True,
            )
            continue
        losses.append([parts["ce"].item(), parts["ctc"].item()])
        state["step"] += 1
        if state["step"] % a.log_every == 0:
            ce, ctc = (sum(x) / len(losses) for x in zip(*losses, strict=True))
            state["log"].append({"step": state["step"], "loss": ce, "ctc": ctc, "lr": lr})
            span = time.time() - logged
            print(
                f"step {state['step']} loss {ce:.3f} ctc {ctc:.3f} lr {lr:.2e} "
                f"progress {progress:.2f}; {1000 * span / len(losses):.0f} ms/step, "
                f"{100 * waited / span:.0f}% waiting for data, "
                f"{1000 * (time.process_time() - cpu) / len(losses):.0f} ms CPU/step "
                f"({time.time() - started:.0f} s)",
                flush=True,
            )
            losses, waited, logged, cpu = [], 0.0, time.time(), time.process_time()
        if state["step"] % a.eval_every == 0:
            evaluate(batcher, heldout, state)
            t0 = logged = time.time()
            cpu = time.process_time()
    return made, epoch + 1


if __name__ == "__main__":
    main()
