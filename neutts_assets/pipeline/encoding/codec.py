"""NeuCodec as this project runs it: loaded once (pretrained, or real architecture with random
weights for tests), trimmed of work whose result is never used, and fed batches that give exactly
the codes of encoding each segment alone.

Why batches are formed by code count: `encode_code` pads every clip with zeros to the next multiple
of 320 samples (a full 320 when it is already one), so a clip of T samples is encoded as a
(T // 320 + 1) * 320-sample input. Clips with the same T // 320 therefore reach the model as inputs
of one length, and a batch of them is a batch of equal-length inputs, each identical to what the
single-clip call sees: equal-length batches give the single-clip codes. Zero-padding clips of
different lengths into one batch does not (the feature extractor normalises over the padding,
w2v-BERT attends to it, the convolutions see it): see SOURCE_LAYOUT.md and the batching test.

torch, neucodec and transformers are imported lazily: the Dagster code location and stage 1 load
without them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neutts_assets import settings as S
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE

HOP = 320  # samples per code at 16 kHz: 50 codes per second
CODES_PER_SECOND = SAMPLE_RATE // HOP
CODEBOOK_SIZE = 65536  # FSQ levels [4] * 8
MIN_SAMPLES = HOP  # encode_code crashes on shorter clips

MODEL_IDS = ("neuphonic/neucodec", "neuphonic/distill-neucodec")
# What NeuCodec.__init__ downloads besides the model's own weights.
SEMANTIC_MODELS = {"neuphonic/neucodec": "facebook/w2v-bert-2.0", "neuphonic/distill-neucodec": "ntu-spml/distilhubert"}
WEIGHTS = ("pretrained", "random", "random-full")
DTYPES = ("float32", "tf32", "bfloat16", "float16")
RANDOM_LABEL = "random-weights"  # in a codec label, marks codes that are for tests only
SEMANTIC_LAYER = 16  # encode_code reads hidden_states[16] of w2v-BERT and nothing after it


class CodecUnavailable(RuntimeError):
    """The codec could not be loaded; the message says which model and what to do."""


def n_codes(num_samples: int) -> int:
    return num_samples // HOP


def batch_key(num_samples: int) -> int:
    """Clips with the same key reach the model as equal-length inputs (see the module docstring)."""
    return num_samples // HOP


@dataclass(frozen=True)
class CodecSettings:
    # The defaults are the environment's (neutts_assets/settings.py), declared there once.
    model_id: str = S.CODEC_MODEL.default
    revision: str | None = S.CODEC_REVISION.default  # a Hub branch, tag or commit; None = main
    weights: str = S.CODEC_WEIGHTS.default  # or "random" (small, for CI and demos) / "random-full" (full size)
    device: str = "cpu"  # a resolved device, never the setting's "auto" (NeuCodecResource.resolved_device)
    dtype: str = S.CODEC_DTYPE.default
    seed: int = S.CODEC_SEED.default
    trim_unused_layers: bool = True

    def __post_init__(self):
        if self.model_id not in MODEL_IDS:
            raise ValueError(f"codec model {self.model_id!r} is not one of {', '.join(MODEL_IDS)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"codec weights {self.weights!r} is not one of {', '.join(WEIGHTS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"codec dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.weights != "pretrained" and self.model_id != "neuphonic/neucodec":
            raise ValueError("random-weight codecs are built for neuphonic/neucodec only")


# --- building the model -----------------------------------------------------------------------

# Random weights start tiny and every code comes out the same; scaling the projection in front of
# the quantizer spreads the FSQ inputs over its levels so that codes vary with the audio.
_RANDOM_PRIOR_SCALE = {"random": 30.0, "random-full": 50.0}


def _assemble_neucodec(
    semantic_config: dict, codec_encoder: dict, generator: dict, semantic_dim: int, acoustic_dim: int
):
    """NeuCodec built as its __init__ builds it, from local configurations instead of two Hub
    downloads (w2v-BERT and its feature extractor). Same classes and same encode_code."""
    from neucodec.codec_decoder_vocos import CodecDecoderVocos
    from neucodec.codec_encoder import CodecEncoder
    from neucodec.model import NeuCodec
    from neucodec.module import SemanticEncoder
    from torch import nn
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    model = NeuCodec.__new__(NeuCodec)
    nn.Module.__init__(model)
    model.sample_rate, model.hop_length = 24_000, 480
    model.semantic_model = Wav2Vec2BertModel(Wav2Vec2BertConfig(output_hidden_states=True, **semantic_config))
    model.feature_extractor = SeamlessM4TFeatureExtractor()  # w2v-bert-2.0's extractor: its defaults
    model.SemanticEncoder_module = SemanticEncoder(semantic_dim, semantic_dim, semantic_dim)
    model.CodecEnc = CodecEncoder(**codec_encoder)
    model.generator = CodecDecoderVocos(hop_length=480, **generator)
    model.fc_prior = nn.Linear(semantic_dim + acoustic_dim, 2048)
    model.fc_post_a = nn.Linear(2048, generator.get("hidden_dim", 1024))
    return model


def build_random_neucodec(size: str = "random", seed: int = 0):
    """The real NeuCodec architecture with seeded random weights, built offline.

    "random-full" has the released sizes (w2v-BERT 2.0: 1024 wide, 24 layers; CodecEncoder and
    decoder at their defaults): about 630 M parameters, 10 s to build and 2 CPU-seconds per audio
    second, which is for benchmarks. "random" keeps every class and the code path but narrows the
    layers (w2v-BERT 32 wide with 17 layers, so hidden_states[16] and the trim both exist), so CI
    encodes a minute of audio in seconds.
    """
    import torch

    torch.manual_seed(seed)
    if size == "random-full":
        model = _assemble_neucodec({}, {}, {}, 1024, 1024)
    elif size == "random":
        model = _assemble_neucodec(
            dict(
                hidden_size=32, num_hidden_layers=17, num_attention_heads=2, intermediate_size=64, output_hidden_size=32
            ),
            dict(ngf=2, hidden_dim=32),
            dict(hidden_dim=32, depth=1, heads=2),
            32,
            32,
        )
    else:
        raise ValueError(f"unknown random codec size {size!r}")
    with torch.no_grad():
        model.fc_prior.weight.mul_(_RANDOM_PRIOR_SCALE[size])
    return model.eval()


def hub_endpoint() -> str:
    return S.HUB_ENDPOINT.read() or S.HUB_DEFAULT_ENDPOINT


def unavailable_message(model_id: str, reason: object) -> str:
    return (
        f"cannot load the NeuCodec weights {model_id!r}: the Hugging Face Hub ({hub_endpoint()}) cannot be "
        f"reached and no local copy was found ({reason}). Point at a local copy: on a machine with Hub access run "
        f"`hf download {model_id}` and `hf download {SEMANTIC_MODELS[model_id]}`, copy that cache here and set "
        f"{S.HF_HOME.env} to it ({S.HF_HUB_OFFLINE.env}=1 keeps it from trying the network). For test-only codes "
        f"without weights, use the random-weight codec ({S.CODEC_WEIGHTS.env}=random)."
    )


def _load_pretrained(settings: CodecSettings, cache_dir: str | None):
    """from_pretrained, with the Hub's and transformers' many failure types turned into one clear error."""

    # A quick look first: the Hub client retries an unreachable endpoint for half a minute.
    reachable, why = pretrained_reachable(settings.model_id, cache_dir=cache_dir)
    if not reachable:
        raise CodecUnavailable(unavailable_message(settings.model_id, why))
    try:
        from neucodec import DistillNeuCodec, NeuCodec

        cls = NeuCodec if settings.model_id == "neuphonic/neucodec" else DistillNeuCodec
        model = cls.from_pretrained(settings.model_id, revision=settings.revision, cache_dir=cache_dir)
    except (
        OSError,
        ValueError,
        RuntimeError,
    ) as exc:  # Hub HTTP errors, offline cache misses and transformers' OSError
        raise CodecUnavailable(
            unavailable_message(settings.model_id, f"{type(exc).__name__}: {str(exc)[:300]}")
        ) from exc
    return model.eval(), _pretrained_label(settings, cache_dir)


def _pretrained_label(settings: CodecSettings, cache_dir: str | None) -> str:
    """model id @ the commit of the weights file (it lies in snapshots/<commit>/): no model is built."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(settings.model_id, "pytorch_model.bin", revision=settings.revision, cache_dir=cache_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CodecUnavailable(
            unavailable_message(settings.model_id, f"{type(exc).__name__}: {str(exc)[:300]}")
        ) from exc
    return f"{settings.model_id}@{os.path.basename(os.path.dirname(path))}"


def codec_label(settings: CodecSettings, cache_dir: str | None = None) -> str:
    """The label the loaded codec will carry, without building or loading the model: a run with
    nothing to encode plans with it and never loads the codec (seconds and ~1 GB saved, and the
    GPU's slot not held). Reduced precision gives (slightly) different codes: a different codec."""
    if settings.weights == "pretrained":
        reachable, why = pretrained_reachable(settings.model_id, cache_dir=cache_dir)
        if not reachable:
            raise CodecUnavailable(unavailable_message(settings.model_id, why))
        label = _pretrained_label(settings, cache_dir)
    else:
        label = random_label(settings)
    return _with_dtype(label, settings)


def _with_dtype(label: str, settings: CodecSettings) -> str:
    return label if settings.dtype == "float32" else f"{label}+{settings.dtype}"


def random_label(settings: CodecSettings) -> str:
    size = "small" if settings.weights == "random" else "full"
    return f"{settings.model_id}@{RANDOM_LABEL}-{size}-seed{settings.seed}"


def trim_unused_layers(model) -> int:
    """Drops the w2v-BERT layers after the one encode_code reads: they change no code. Returns how many."""
    semantic = getattr(model, "semantic_model", None)
    layers = getattr(getattr(semantic, "encoder", None), "layers", None)
    if type(model).__name__ != "NeuCodec" or layers is None or len(layers) <= SEMANTIC_LAYER:
        return 0
    dropped = len(layers) - SEMANTIC_LAYER
    semantic.encoder.layers = layers[:SEMANTIC_LAYER]
    return dropped


@dataclass
class PreparedBatch:
    """Clips of one batch key as the device will take them: int16 rows of one model input length
    (each clip followed by zeros, exactly encode_code's padding), in pinned host memory with the
    copy to the device already started on a stream of its own, so it overlaps the model's work on
    the batch before."""

    lengths: list[int]
    host: object  # torch.Tensor [B, T_in] int16 (float32 for float clips), pinned on CUDA; kept until the copy is done
    device: object  # the same on the codec's device
    copied: object = None  # torch.cuda.Event recorded after the copy; None on the CPU

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def audio_seconds(self) -> float:
        return sum(self.lengths) / SAMPLE_RATE


def default_batch_seconds(device: str) -> float:
    """Audio seconds per codec call when none is configured: sized from the device's memory.

    Measured activation memory of the float32 encode (16 w2v-BERT layers and the acoustic encoder,
    inference mode) is about ACTIVATION_BYTES_PER_AUDIO_SECOND at its peak; a batch may take a
    third of the device's memory, the weights (2.5 GB) and the allocator's slack the rest. On an
    H200 (141 GB) that is about 1,400 s of audio per call, for an 80 GB H100 about 800 s. On the
    CPU, CODEC_CPU_BATCH_SECONDS (neutts_assets/settings.py) keeps a call's working set in cache.
    Batches hold clips of one code count only (exact codes), so they reach this size only in
    channels with many clips per code count (~400 per 20 ms step in a 300K-segment channel)."""
    if device.startswith("cuda"):
        import torch

        return batch_seconds_for_memory(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return S.CODEC_CPU_BATCH_SECONDS


def batch_seconds_for_memory(total_bytes: int) -> float:
    """A third of the device's memory for one batch's activations, within 120..3600 s."""
    return float(min(3600.0, max(120.0, total_bytes / 3 / ACTIVATION_BYTES_PER_AUDIO_SECOND)))


# Peak activation bytes per audio-second of a float32 batch (full-size NeuCodec, inference mode),
# rounded up: measured on the CPU as the peak RSS a batch of 2 x 10 s adds (30.6 MB per audio-s).
# bench/encode.py prints the GPU's peak on a GPU run (peak_gpu_mb_ours), to check it there.
ACTIVATION_BYTES_PER_AUDIO_SECOND = 32 * 10**6


class Codec:
    """A loaded codec: `prepare` lays out clips of one batch key for the device, `encode_batch`
    returns their codes. w2v-BERT's input features are computed on the codec's device, batched, in
    torch (pipeline/encoding/w2v_features.py), from the same samples encode_code would give the extractor."""

    def __init__(self, model, label: str, settings: CodecSettings):
        import torch

        self.model, self.label, self.settings = model, label, settings
        self.device = torch.device(settings.device)
        self.layers_trimmed = trim_unused_layers(model) if settings.trim_unused_layers else 0
        self.model.to(self.device)
        self._features = None
        cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        # Seconds of device work, summed: features and the model (CUDA events on a GPU, so the host
        # does not wait to time them).
        self.feature_seconds = self.model_seconds = 0.0

    @property
    def test_only(self) -> bool:
        return RANDOM_LABEL in self.label

    @property
    def uses_features(self) -> bool:
        return type(self.model).__name__ == "NeuCodec"  # DistillNeuCodec runs encode_code whole

    def _precision(self):
        import torch

        # Global flags, set for every call: float32 means float32 (the single-clip reference codes
        # are made without TF32), whatever another codec in this process asked for.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.settings.dtype == "tf32"
        if self.settings.dtype in ("bfloat16", "float16"):
            return torch.autocast(self.device.type, dtype=getattr(torch, self.settings.dtype))
        return contextlib.nullcontext()

    def features(self, clip: np.ndarray):
        """The reference: transformers' numpy extractor on one clip, as encode_code computes it (on the
        clip zero-padded to its model input length); None for DistillNeuCodec. The stream does not
        use this: its features are computed on the device (`encode_batch`)."""
        import torch

        if not self.uses_features:
            return None
        y = torch.from_numpy(model_input(clip))
        return self.model.feature_extractor(y[None], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    def prepare(self, clips: Sequence[np.ndarray]) -> PreparedBatch:
        """Host work for one batch: check it, lay it out in (pinned) memory, start the copy."""
        import torch

        if not clips:
            raise ValueError("an empty batch")
        keys = {batch_key(len(c)) for c in clips}
        if len(keys) != 1:
            raise ValueError(f"a batch must hold clips of one code count, got {sorted(keys)}")
        short = [len(c) for c in clips if len(c) < MIN_SAMPLES]
        if short:
            raise ValueError(f"clips shorter than {MIN_SAMPLES} samples cannot be encoded: {short}")
        width = (keys.pop() + 1) * HOP  # encode_code's input length for every clip of this key
        cuda = self.device.type == "cuda"
        # int16 samples cross to the device at half the bytes of float32 and are scaled there
        pcm = all(c.dtype == np.int16 for c in clips)
        # torch.empty, filled by numpy: torch's own fill runs on its OpenMP threads, whose spin-wait
        # afterwards costs milliseconds of CPU per call (measured: 5.7 ms for a 5 s clip)
        host = torch.empty((len(clips), width), dtype=torch.int16 if pcm else torch.float32, pin_memory=cuda)
        rows = host.numpy()
        for i, c in enumerate(clips):
            rows[i, : len(c)] = c if pcm else as_float(c)
            rows[i, len(c) :] = 0
        if not cuda:
            return PreparedBatch([len(c) for c in clips], host, host)
        with torch.cuda.stream(self._copy_stream):
            device = host.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        return PreparedBatch([len(c) for c in clips], host, device, copied)

    def encode_batch(self, clips, features: Sequence | None = None) -> list[np.ndarray]:
        """Codes for clips that share one batch key (a list of clips, or a PreparedBatch); each result
        has n_codes(len(clip)) int32 codes.

        Every row is the clip zero-padded to the batch's one model input length, which is exactly
        the input encode_code gives each clip alone. With `features` (the numpy extractor's, from
        `features()`: the tests' reference), the model's steps run on them."""
        import torch

        if not isinstance(clips, PreparedBatch) and not len(clips):
            return []
        batch = clips if isinstance(clips, PreparedBatch) else self.prepare(clips)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._precision():
            if batch.copied is not None:
                torch.cuda.current_stream(self.device).wait_event(batch.copied)
                batch.device.record_stream(torch.cuda.current_stream(self.device))
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else None
            t0 = time.perf_counter()
            if marks:
                marks[0].record()
            with torch.autocast(self.device.type, enabled=False):
                x = (
                    batch.device.to(torch.float32) / 32768.0 if batch.device.dtype == torch.int16 else batch.device
                )  # as_float: exact
                if features is not None and all(f is not None for f in features):
                    feats = torch.vstack(list(features)).to(self.device)
                elif self.uses_features:
                    feats = self._feature_extractor()(x)
                else:
                    feats = None
            if marks:
                marks[1].record()
            t1 = time.perf_counter()
            if feats is None:
                codes = self.model.encode_code(x[:, None, : max(batch.lengths)])  # it pads by itself
            else:
                codes = _neucodec_encode(self.model, x[:, None, :], feats, self.device)
            if marks:
                marks[2].record()
            codes = codes.cpu().numpy()  # waits for the device
        if marks:
            self.feature_seconds += marks[0].elapsed_time(marks[1]) / 1000
            self.model_seconds += marks[1].elapsed_time(marks[2]) / 1000
        else:
            self.feature_seconds += t1 - t0
            self.model_seconds += time.perf_counter() - t1
        return [check_codes(codes[i, 0, : n_codes(n)], n) for i, n in enumerate(batch.lengths)]

    def _feature_extractor(self):
        if self._features is None:
            from neutts_assets.pipeline.encoding.w2v_features import W2vBertFeatures

            self._features = W2vBertFeatures(device=self.device)
        return self._features

    def encode_one(self, clip: np.ndarray) -> np.ndarray:
        return self.encode_batch([clip])[0]


def as_float(clip: np.ndarray) -> np.ndarray:
    """The float32 waveform encode_code expects; int16 PCM is scaled as the old files stored it."""
    if clip.dtype == np.int16:
        return clip.astype(np.float32) / 32768.0
    return clip.astype(np.float32, copy=False)


def model_input(clip: np.ndarray) -> np.ndarray:
    """The clip as encode_code feeds it to the model: float32, zero-padded by 320 - T % 320 samples."""
    x = as_float(clip)
    return np.concatenate([x, np.zeros(HOP - len(x) % HOP, dtype=np.float32)])


def _neucodec_encode(model, y, semantic_features, device):
    """NeuCodec.encode_code (neucodec 0.0.6) after its input preparation: the same modules in the
    same order on the same tensors, with the features computed beforehand."""
    import torch

    acoustic_emb = model.CodecEnc(y.to(device)).transpose(1, 2)
    semantic_output = model.semantic_model(semantic_features.to(device)).hidden_states[SEMANTIC_LAYER].transpose(1, 2)
    semantic_encoded = model.SemanticEncoder_module(semantic_output)
    if acoustic_emb.shape[-1] != semantic_encoded.shape[-1]:
        min_len = min(acoustic_emb.shape[-1], semantic_encoded.shape[-1])
        acoustic_emb, semantic_encoded = acoustic_emb[:, :, :min_len], semantic_encoded[:, :, :min_len]
    concat_emb = torch.cat([semantic_encoded, acoustic_emb], dim=1)
    concat_emb = model.fc_prior(concat_emb.transpose(1, 2)).transpose(1, 2)
    _, fsq_codes, _ = model.generator(concat_emb, vq=True)
    return fsq_codes


def pad_batch(clips: Sequence[np.ndarray]) -> np.ndarray:
    """[B, 1, T] float32, each clip followed by zeros up to the longest."""
    x = np.zeros((len(clips), 1, max(len(c) for c in clips)), dtype=np.float32)
    for i, c in enumerate(clips):
        x[i, 0, : len(c)] = as_float(c)
    return x


def check_codes(codes: np.ndarray, num_samples: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.shape != (n_codes(num_samples),):
        raise RuntimeError(
            f"codec returned {codes.shape[0]} codes for {num_samples} samples, expected {n_codes(num_samples)}"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
        raise RuntimeError(f"codec returned codes outside 0..{CODEBOOK_SIZE - 1}")
    return codes.astype(np.int32)


def load_codec(settings: CodecSettings, cache_dir: str | None = None) -> Codec:
    """Pretrained weights from the Hub (or its local cache), or the random-weight architecture.

    Raises CodecUnavailable, naming the model and how to supply a local copy, when the weights
    cannot be had; callers load the codec before writing anything.
    """
    import torch

    if not settings.device.startswith("cuda"):
        # oneDNN caches up to 1,024 primitives keyed by shape, and every code count is a new shape: its
        # small long-lived entries land between the batches' large buffers, and glibc's heap can then
        # neither shrink nor reuse the holes (measured on the stream's batching of 20,000 segments:
        # 4.0 GB peak RSS for 223 MB in use; without the cache 1.2 GB, codes identical, no cost where
        # each batch is a new shape anyway). Read when oneDNN first builds a primitive: set before that.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise CodecUnavailable(f"codec device {settings.device!r} requested but CUDA is not available on this machine")
    if settings.weights == "pretrained":
        model, label = _load_pretrained(settings, cache_dir)
    else:
        model, label = build_random_neucodec(settings.weights, settings.seed), random_label(settings)
    return Codec(model, _with_dtype(label, settings), settings)


def pretrained_reachable(
    model_id: str = S.CODEC_MODEL.default, timeout_s: float = 5.0, cache_dir: str | None = None
) -> tuple[bool, str]:
    """Whether from_pretrained can get the weights: the Hub answers, or the cache (HF_HOME) holds
    the model and its semantic model. Returns (yes, why not)."""
    import urllib.request

    from huggingface_hub import try_to_load_from_cache

    cached = all(
        isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str)
        for repo, name in ((model_id, "pytorch_model.bin"), (SEMANTIC_MODELS[model_id], "config.json"))
    )
    if cached:
        return True, ""
    if S.HF_HUB_OFFLINE.read():
        return False, f"{S.HF_HUB_OFFLINE.env} is set and the cache ({S.HF_HOME.env}) does not hold the weights"
    url = f"{hub_endpoint().rstrip('/')}/api/models/{model_id}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read(1)
        return True, ""
    except Exception as exc:
        return False, f"{url}: {type(exc).__name__}: {str(exc)[:200]}"
