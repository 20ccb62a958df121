"""VLLMGenerator against TorchGenerator; runs only where vLLM is installed.

    /tmp/vllmenv/bin/python -m pytest tests/demo/test_vllm_generator.py -m slow
"""

import pytest
import torch

from forge_rl.demo.model import ModelConfig, build_model
from forge_rl.demo.task import AdditionTask
from forge_rl.demo.tokenizer import CharTokenizer
from forge_rl.demo.torch_generator import TorchGenerator

pytest.importorskip("vllm")
pytest.importorskip("tokenizers")

TOK = CharTokenizer()
# head_dim 32: a size vLLM's CPU attention supports.
CONFIG = ModelConfig(vocab_size=TOK.vocab_size)


@pytest.mark.slow
def test_vllm_matches_torch_before_and_after_weight_reload(tmp_path):
    from forge_rl.demo.vllm_generator import VLLMGenerator

    prompts = AdditionTask().all_prompts()[:40]
    vllm_gen = VLLMGenerator(CONFIG, seed=0, init_seed=0, folder=str(tmp_path / "model"))
    torch_gen = TorchGenerator(CONFIG, seed=0, init_seed=0)

    def greedy(gen):
        return [g[0] for g in gen.generate(prompts, n=1, max_tokens=3, temperature=0)]

    def assert_same(a, b):
        for x, y in zip(a, b):
            assert (x.token_ids, x.text, x.finish_reason) == (y.token_ids, y.text, y.finish_reason)
            assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)

    assert_same(greedy(vllm_gen), greedy(torch_gen))

    new_weights = build_model(CONFIG, 123).state_dict()
    vllm_gen.load_state_dict(new_weights, version=1)
    torch_gen.load_state_dict(new_weights, version=1)
    assert_same(greedy(vllm_gen), greedy(torch_gen))

    groups = vllm_gen.generate(prompts[:4], n=5, max_tokens=2, temperature=1.0)
    assert [len(g) for g in groups] == [5] * 4
    assert all(len(c.logprobs) == len(c.token_ids) for g in groups for c in g)
