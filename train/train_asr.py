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

On CUDA it trains under bf16 autocast with TF32 matmuls; on a CPU in float32 (the smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from engine.models.qwen3_asr import Qwen3ASR
from engine.tokenizer import Tokenizer
from engine.weights import load_safetensors
from train.data import Utterance, batches, load_manifests, prefetch, read_manifest
from train.export import export
from train.make_data import normalize_text
from train.model import Batcher, Prepared, build_model, config_json
from train.synth import SynthStream
from train.tokenizer import TOKENIZER_FILES, write_tokenizer
from train.wer import wer

CHECKPOINT = "checkpoint.pt"


def lr_at(step: int, progress: float, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up over `warmup` steps, then cosine from peak to floor * peak over progress
    (the share of the total training time spent, 0..1)."""
    warm = min(1.0, (step + 1) / warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak * warm * (floor + (1 - floor) * cosine)


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
        hyps = batcher.transcribe([torch.from_numpy(u.audio) for u in part])
        pairs += [(u.text, h) for u, h in zip(part, hyps, strict=True)]
    batcher.model.train()
    return wer(pairs), pairs


def silence(rng: random.Random, seconds: float) -> Utterance:
    """Noise without speech (its answer is `language None<asr_text>`), so that VAD false
    starts do not make the model invent words."""
    n = int(seconds * 16000)
    level = 10 ** rng.uniform(-4, -1.5)
    x = torch.randn(n, generator=torch.Generator().manual_seed(rng.randrange(2**31))) * level
    return Utterance("silence", x.numpy(), "")


def noise_levels(n: int, rng: random.Random) -> list[float]:
    """On-the-fly augmentation on top of the generator's: white noise at 10-50 dB SNR on half
    of the utterances, a different draw every epoch (added on the device by the Batcher)."""
    return [rng.uniform(10, 50) if rng.random() < 0.5 else math.inf for _ in range(n)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="*", default=[], help="folders with train.jsonl")
    ap.add_argument(
        "--synth-workers", type=int, default=0, help="processes making fresh speech (0: none)"
    )
    ap.add_argument(
        "--synth-hours", type=float, default=100.0, help="newest synthesized audio kept"
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
    t_start = time.time()
    deadline = t_start + a.minutes * 60
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    a.run.mkdir(parents=True, exist_ok=True)

    resumed = (a.run / CHECKPOINT).exists()
    state: dict = {}
    if resumed:
        model, config, state = load_checkpoint(a.run, a.device)
        tokenizer = Tokenizer.from_folder(a.run / "tokenizer")
        print(f"resumed at step {state['step']}", flush=True)
    fixed = load_manifests([d / "train.jsonl" for d in a.data], a.limit) if a.data else []
    heldout = load_manifests([a.heldout / "heldout.jsonl"], a.eval_utterances) if a.heldout else []
    synth = None
    if a.synth_workers:
        reserved = (
            frozenset(normalize_text(r["text"]) for r in read_manifest(a.heldout / "heldout.jsonl"))
            if a.heldout
            else frozenset()
        )
        seed = a.seed * 1000 + state.get("runs", 0)  # each run makes other utterances
        synth = SynthStream(a.synth_workers, seed, reserved, a.synth_hours)
        # With every core busy, an OpenMP team as wide as the machine waits on descheduled
        # threads at each CPU op of the step (measured: 10x slower steps on 16 cores).
        torch.set_num_threads(2)
        synth.wait(a.synth_start)
        print(f"synthesized {synth.hours:.2f} h in {time.time() - t_start:.0f} s", flush=True)
    elif not fixed:
        ap.error("give --data, --synth-workers or both")

    def corpus() -> list[Utterance]:
        return fixed + (list(synth.corpus) if synth else [])

    train = corpus()
    hours = sum(u.audio.size for u in train) / 16000 / 3600
    print(f"data: {len(train)} utterances, {hours:.2f} h; held-out {len(heldout)}", flush=True)

    if not resumed:
        if a.init:
            model, config, tokenizer = start_from(a.init, a.run / "tokenizer", a.device)
        else:
            tokenizer = write_tokenizer(a.run / "tokenizer", [u.text for u in train])
            config = config_json(a.preset, tokenizer)
            model = build_model(config, a.device)
        state = {"step": 0, "train_seconds": 0.0, "epoch": 0, "runs": 0, "log": []}
        if a.init:
            state["init"] = str(a.init)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f} M parameters", flush=True)
    optimizer = make_optimizer(model, a.lr)
    if "optimizer" in state:
        optimizer.load_state_dict(state.pop("optimizer"))
    batcher = Batcher(model, tokenizer)
    rng = random.Random(a.seed * 1000 + state["epoch"])
    model.train()

    def evaluate() -> None:
        if heldout and not any(
            e.get("heldout_wer") is not None and e["step"] == state["step"] for e in state["log"]
        ):
            score, pairs = held_out_wer(batcher, heldout)
            state["log"].append({"step": state["step"], "heldout_wer": score})
            print(f"step {state['step']}: held-out WER {score:.3f} on {len(pairs)}", flush=True)
            for ref, hyp in pairs[:3]:
                print(f"  ref: {ref}\n  hyp: {hyp}", flush=True)

    # Keep enough time for the final evaluation, the checkpoint and the export.
    reserve = 20.0 + (0.15 * len(heldout) if cuda else 1.0 * len(heldout))

    def ready_batches() -> Iterator[tuple[list[Utterance], Prepared]]:
        """Endless epochs of batches, made ready on the CPU (in the prefetch thread, which
        alone draws from rng and touches the synthesized corpus)."""
        while True:
            for batch in batches(corpus(), a.batch_seconds, rng):
                if synth:
                    synth.refresh()
                if rng.random() < 0.5:  # about 2% of utterances are silence
                    batch = batch + [silence(rng, rng.uniform(0.5, 4.0))]
                waves = [torch.from_numpy(u.audio) for u in batch]
                texts = [u.text for u in batch]
                yield batch, batcher.prepare(waves, texts, noise_levels(len(batch), rng))
            state["epoch"] += 1

    losses: list[list[float]] = []
    waited = 0.0  # seconds the trainer waited for a batch since the last log line
    t0 = logged = time.time()  # training time runs from t0, data waits in, evaluations out
    for batch, ready in prefetch(ready_batches(), depth=3):
        waited += time.time() - t0
        if time.time() > deadline - reserve or state["step"] == a.max_steps:
            break
        progress = state["train_seconds"] / (a.total_minutes * 60)
        lr = lr_at(state["step"], progress, a.lr, a.warmup)
        for g in optimizer.param_groups:
            g["lr"] = lr
        parts, stepped = train_step(batcher, optimizer, ready, a.ctc_weight, device)
        state["train_seconds"] += time.time() - t0
        t0 = time.time()  # a skipped step's time is training time too, not a wait for data
        if not stepped:
            state["skipped"] = state.get("skipped", 0) + 1
            seconds = [u.audio.size / 16000 for u in batch]
            print(
                f"step {state['step']}: skipped, non-finite gradient (ce {parts['ce']:.3f}, "
                f"ctc {parts['ctc']:.3f}; {len(batch)} utterances of "
                f"{min(seconds):.2f}-{max(seconds):.2f} s)",
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
                f"{100 * waited / span:.0f}% waiting for data ({time.time() - t_start:.0f} s)",
                flush=True,
            )
            losses, waited, logged = [], 0.0, time.time()
        if state["step"] % a.eval_every == 0:
            evaluate()
            t0 = logged = time.time()
    if synth:
        state["synth_utterances"] = state.get("synth_utterances", 0) + synth.made
        synth.close()
    state["runs"] = state.get("runs", 0) + 1
    evaluate()
    save_checkpoint(a.run, model, config, optimizer, state)
    size = export(model, config, a.run / "tokenizer", a.run / "model")
    print(
        f"saved step {state['step']}; model {size / 2**20:.2f} MiB; "
        f"run {time.time() - t_start:.0f} s",
        flush=True,
    )
    return state


if __name__ == "__main__":
    main()
