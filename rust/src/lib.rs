//! gptrs_tok: exact byte-level BPE (training and encoding), GPT-2/GPT-4 style.
