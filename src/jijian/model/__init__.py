"""The Llama-family model, its tokenizer, generation, and Hugging Face format import/export."""

from jijian.model.generate import generate
from jijian.model.llama import CausalLM, build_model

__all__ = ["CausalLM", "build_model", "generate"]
