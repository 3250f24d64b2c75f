"""Hugging Face checkpoint -> GGUF conversion (`lantern convert`).

    from lanternlm.formats.convert import convert_hf_to_gguf
    report = convert_hf_to_gguf("path/to/hf_model", "model.gguf", outtype="f16")

Supports the llama, qwen2 and gemma3 families (HF `LlamaForCausalLM`, `Qwen2ForCausalLM`,
`Gemma3ForCausalLM`) with safetensors weights and a SentencePiece `tokenizer.model` or a
byte-level BPE `tokenizer.json`. Metadata keys, tensor names and tensor rewrites follow
llama.cpp's convert_hf_to_gguf.py, so the files load in llama.cpp as well.
"""
from .checkpoint import ConvertError
from .converter import DEFAULT_OUTTYPE, OUTTYPES, ConversionReport, convert_hf_to_gguf

__all__ = ["ConvertError", "ConversionReport", "DEFAULT_OUTTYPE", "OUTTYPES", "convert_hf_to_gguf"]
