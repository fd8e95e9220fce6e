"""torch_compile=true compiles every transformer block (the unit of compile, as of sharding)
and computes the same scores and gradients as eager mode."""
import torch

from llip.models import build_model, transformer_blocks
from llip.run_configs import resolve
from llip.training.dist import World
from llip.training.parallel import parallelize


def test_compiled_blocks_match_eager_scores_and_gradients():
    cfg = resolve("llip_tiny", ["torch_compile=true"])
    torch.manual_seed(0)
    eager = build_model(cfg)
    torch.manual_seed(0)
    compiled = parallelize(build_model(cfg), cfg, World())
    assert all(block._compiled_call_impl is not None for block in transformer_blocks(compiled))
    assert all(block._compiled_call_impl is None for block in transformer_blocks(eager))
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 49000, (4, 16), generator=g)
    tokens[:, 5] = 49407  # end of text
    for model in (eager, compiled):
        model.logits(*model(images, tokens)).pow(2).mean().backward()
    torch.testing.assert_close(compiled.logits(*compiled(images, tokens)),
                               eager.logits(*eager(images, tokens)), atol=1e-5, rtol=0)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        # fp32 kernels fused differently: equal to 1e-5 relative to the gradient's scale
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5 * p.grad.abs().max().item(),
                                   rtol=0, msg=name)
