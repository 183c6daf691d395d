"""Shared test doubles, by concern, for the tests and the benchmarks (no test module imports another test module).

- `stages`: `run_stage`, a stage run as dvc runs it, in another working directory; `ROOT`.
- `fake_anthropic`: `FakeAnthropic`, a Messages API server on 127.0.0.1 for the official SDK, and
  `policy_answer`, a judge for it that applies the written policy (as the rubric does) to what the request says.
- `fake_openai`: `FakeOpenAI` and `chat_answer`, the same for an OpenAI-compatible chat-completions server.
- `vllm`: `vllm_server`, a real one, vLLM's, serving SmolLM2-135M-Instruct (`smollm2_folder`) on 127.0.0.1.
- `models`: `save_tiny` / `save_adapter_for`, tiny models of real architectures saved as a hub download would
  be; `rubric_pairs` / `train_reward_model`, the task's rubric-labelled pairs and a tiny reward model trained
  on them in seconds.
- `gguf_file`: `write_tiny_gguf`, a tiny llama GGUF file with its tokenizer and chat template.
- `ultrafeedback`: `ULTRAFEEDBACK`, `uf_row`, `write_parquet`, preference data shaped like
  HuggingFaceH4/ultrafeedback_binarized.
- `page`: `Page`, reports/report.html in headless Chromium.
"""
