"""Hugging Face checkpoint folder -> one GGUF file.

    report = convert_hf_to_gguf("SmolLM2-135M-Instruct/", "smollm2.gguf", outtype="q8_0")

Steps: read config.json and the safetensors headers; pick the family from
`architectures[0]`; collect hyperparameters and the vocabulary as metadata; check that every
tensor maps to a GGUF name and none is missing; then convert the tensors one at a time while
`write_gguf` spools them to disk, so memory stays near one tensor; the file appears atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFType, LlamaFileType

from ..output_guard import check_output_path
from ..writer import write_gguf
from .checkpoint import ConvertError, HFCheckpoint
from .families import family_for
from .hf_config import HFConfig, add_generic_hparams
from .hf_tensors import convert_tensors, plan_tensors
from .hf_tokenizer import TOKENIZER_FILES, add_vocab, load_vocab
from .metadata import MetadataBuilder

__all__ = ["OUTTYPES", "ConversionReport", "convert_hf_to_gguf"]

# --outtype -> (type of the weight matrices, general.file_type)
OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
DEFAULT_OUTTYPE = "f16"  # llama.cpp's converter's long-standing default


@dataclass(frozen=True)
class ConversionReport:
    path: Path
    hf_architecture: str
    arch: str
    outtype: str
    n_tensors: int
    n_vocab: int


def _checked_output(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    if out.is_dir():
        raise ConvertError(f"{out}: is a directory; give the output file's name (e.g. model.gguf)")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: output directory does not exist")
    return out


def convert_hf_to_gguf(hf_dir: str | os.PathLike, out_path: str | os.PathLike,
                       outtype: str = DEFAULT_OUTTYPE, progress: bool = False) -> ConversionReport:
    """Convert a llama / qwen2 / gemma3 checkpoint folder to a GGUF file at `out_path`."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    wanted, file_type = OUTTYPES[outtype]
    out = _checked_output(out_path)
    ckpt = HFCheckpoint.open(hf_dir)
    check_output_path(out, inputs=[*ckpt.files, *(ckpt.directory / name for name in TOKENIZER_FILES)])
    hf_arch, family = family_for(ckpt.config)
    cfg = HFConfig(ckpt.config)

    meta = MetadataBuilder(family.arch_name)
    meta.add_type(GGUFType.MODEL)
    meta.add_name(ckpt.directory.resolve().name)
    add_generic_hparams(cfg, meta, family.rope_types)
    family.add_hparams(cfg, meta)
    meta.add_file_type(file_type)
    meta.add_quantization_version(GGML_QUANT_VERSION)

    n_vocab = int(cfg.require("vocab_size"))
    vocab = load_vocab(ckpt.directory, n_vocab)
    add_vocab(meta, vocab, ckpt.directory)
    family.add_tokenizer_keys(vocab, meta)

    jobs = plan_tensors(ckpt, family, cfg)
    kv, kv_types, array_types = meta.export()
    from tqdm import tqdm

    with tqdm(total=len(jobs), unit="tensor", desc=f"converting to {outtype}", disable=not progress) as bar:
        tensors = convert_tensors(jobs, family, cfg, len(vocab.tokens), wanted, progress=bar)
        write_gguf(out, kv, tensors, kv_types=kv_types, kv_array_types=array_types, spool_to_disk=True)
    return ConversionReport(out, hf_arch, family.arch_name, outtype, len(jobs), len(vocab.tokens))

