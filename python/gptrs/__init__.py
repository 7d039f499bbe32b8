"""gptrs: a GPT you can read end to end and train yourself, from tokenizer to text generation."""

__version__ = "0.1.0"
