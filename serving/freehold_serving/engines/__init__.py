# The engine versions the serving image installs (pyproject pins them; a test checks the
# pin and the installed version agree). The ML-BOM names them without importing the engine.
ENGINE_PACKAGES = {"llamacpp": ("llama-cpp-python", "0.3.16"), "vllm": ("vllm", "0.29.0")}
