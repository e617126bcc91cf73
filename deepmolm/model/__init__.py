"""DeepMoLM: DeepEncoder drawing tokens, grounded in E3FP geometry tokens, decoded by a Qwen2 LM."""
