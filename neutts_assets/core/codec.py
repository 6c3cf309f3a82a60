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
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from neutts_assets.core.audio import SAMPLE_RATE

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
    model_id: str = "neuphonic/neucodec"
    revision: str | None = None  # a Hub branch, tag or commit; None = main
    weights: str = "pretrained"  # or "random" (small, for CI and demos) / "random-full" (full size)
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
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


def _assemble_neucodec(semantic_config: dict, codec_encoder: dict, generator: dict, semantic_dim: int, acoustic_dim: int):
    """NeuCodec built as its __init__ builds it, from local configurations instead of two Hub
    downloads (w2v-BERT and its feature extractor). Same classes and same encode_code."""
    from torch import nn
    from neucodec.codec_decoder_vocos import CodecDecoderVocos
    from neucodec.codec_encoder import CodecEncoder
    from neucodec.model import NeuCodec
    from neucodec.module import SemanticEncoder
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
            dict(hidden_size=32, num_hidden_layers=17, num_attention_heads=2, intermediate_size=64, output_hidden_size=32),
            dict(ngf=2, hidden_dim=32),
            dict(hidden_dim=32, depth=1, heads=2),
            32, 32,
        )
    else:
        raise ValueError(f"unknown random codec size {size!r}")
    with torch.no_grad():
        model.fc_prior.weight.mul_(_RANDOM_PRIOR_SCALE[size])
    return model.eval()


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def unavailable_message(model_id: str, reason: object) -> str:
    return (
        f"cannot load the NeuCodec weights {model_id!r}: the Hugging Face Hub ({hub_endpoint()}) cannot be "
        f"reached and no local copy was found ({reason}). Point at a local copy: on a machine with Hub access run "
        f"`hf download {model_id}` and `hf download {SEMANTIC_MODELS[model_id]}`, copy that cache here and set "
        f"HF_HOME to it (HF_HUB_OFFLINE=1 keeps it from trying the network). For test-only codes without "
        f"weights, use the random-weight codec (NEUTTS_CODEC=random)."
    )


def _load_pretrained(settings: CodecSettings, cache_dir: str | None):
    """from_pretrained, with the Hub's and transformers' many failure types turned into one clear error."""
    from huggingface_hub import hf_hub_download

    # A quick look first: the Hub client retries an unreachable endpoint for half a minute.
    reachable, why = pretrained_reachable(settings.model_id, cache_dir=cache_dir)
    if not reachable:
        raise CodecUnavailable(unavailable_message(settings.model_id, why))
    try:
        from neucodec import DistillNeuCodec, NeuCodec

        cls = NeuCodec if settings.model_id == "neuphonic/neucodec" else DistillNeuCodec
        model = cls.from_pretrained(settings.model_id, revision=settings.revision, cache_dir=cache_dir)
        # The file from_pretrained just used lies in snapshots/<commit>/: that commit names the weights.
        path = hf_hub_download(settings.model_id, "pytorch_model.bin", revision=settings.revision, cache_dir=cache_dir)
    except (OSError, ValueError, RuntimeError) as exc:  # Hub HTTP errors, offline cache misses and transformers' OSError
        raise CodecUnavailable(unavailable_message(settings.model_id, f"{type(exc).__name__}: {str(exc)[:300]}")) from exc
    commit = os.path.basename(os.path.dirname(path))
    return model.eval(), f"{settings.model_id}@{commit}"


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


class Codec:
    """A loaded codec: `encode_batch` takes int16 or float clips of one batch key and returns their codes."""

    def __init__(self, model, label: str, settings: CodecSettings):
        import torch

        self.model, self.label, self.settings = model, label, settings
        self.device = torch.device(settings.device)
        self.layers_trimmed = trim_unused_layers(model) if settings.trim_unused_layers else 0
        self.model.to(self.device)

    @property
    def test_only(self) -> bool:
        return RANDOM_LABEL in self.label

    def _precision(self):
        import torch

        if self.settings.dtype in ("bfloat16", "float16"):
            return torch.autocast(self.device.type, dtype=getattr(torch, self.settings.dtype))
        return contextlib.nullcontext()

    def features(self, clip: np.ndarray):
        """w2v-BERT's input features for one clip, computed exactly as encode_code computes them
        (on the clip zero-padded to its model input length), or None where encode_code is used
        whole (DistillNeuCodec). The feature extractor runs on the CPU in numpy: the stream calls
        this in its download threads, so a GPU never waits for it."""
        import torch

        if type(self.model).__name__ != "NeuCodec":
            return None
        y = torch.from_numpy(model_input(clip))
        return self.model.feature_extractor(y[None], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    def encode_batch(self, clips: Sequence[np.ndarray], features: Sequence | None = None) -> list[np.ndarray]:
        """Codes for clips that share one batch key; each result has n_codes(len(clip)) int32 codes.

        Every row is the clip zero-padded to the batch's one model input length, which is exactly
        the input encode_code gives each clip alone. With `features` (from `features()`), the
        model's steps run here on them; without, encode_code runs whole.
        """
        import torch

        if not clips:
            return []
        keys = {batch_key(len(c)) for c in clips}
        if len(keys) != 1:
            raise ValueError(f"a batch must hold clips of one code count, got {sorted(keys)}")
        short = [len(c) for c in clips if len(c) < MIN_SAMPLES]
        if short:
            raise ValueError(f"clips shorter than {MIN_SAMPLES} samples cannot be encoded: {short}")
        x = pad_batch(clips)
        with torch.inference_mode(), self._precision():
            if features is None or any(f is None for f in features):
                codes = self.model.encode_code(torch.from_numpy(x))
            else:
                y = torch.from_numpy(np.stack([model_input(c) for c in clips])[:, None, :])
                codes = _neucodec_encode(self.model, y, torch.vstack(list(features)), self.device)
        codes = codes.cpu().numpy()
        return [check_codes(codes[i, 0, : n_codes(len(c))], len(c)) for i, c in enumerate(clips)]

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
        raise RuntimeError(f"codec returned {codes.shape[0]} codes for {num_samples} samples, expected {n_codes(num_samples)}")
    if codes.size and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
        raise RuntimeError(f"codec returned codes outside 0..{CODEBOOK_SIZE - 1}")
    return codes.astype(np.int32)


def load_codec(settings: CodecSettings, cache_dir: str | None = None) -> Codec:
    """Pretrained weights from the Hub (or its local cache), or the random-weight architecture.

    Raises CodecUnavailable, naming the model and how to supply a local copy, when the weights
    cannot be had; callers load the codec before writing anything.
    """
    import torch

    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise CodecUnavailable(f"codec device {settings.device!r} requested but CUDA is not available on this machine")
    if settings.dtype == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif settings.device.startswith("cuda"):
        # float32 means float32: the single-clip reference codes are made without TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if settings.weights == "pretrained":
        model, label = _load_pretrained(settings, cache_dir)
    else:
        model = build_random_neucodec(settings.weights, settings.seed)
        label = random_label(settings)
    if settings.dtype != "float32":
        label += f"+{settings.dtype}"  # reduced precision gives (slightly) different codes: a different codec
    return Codec(model, label, settings)


def pretrained_reachable(model_id: str = "neuphonic/neucodec", timeout_s: float = 5.0, cache_dir: str | None = None) -> tuple[bool, str]:
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
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set and the cache (HF_HOME) does not hold the weights"
    url = f"{hub_endpoint().rstrip('/')}/api/models/{model_id}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read(1)
        return True, ""
    except Exception as exc:
        return False, f"{url}: {type(exc).__name__}: {str(exc)[:200]}"
