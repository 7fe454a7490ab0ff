from __future__ import annotations

import pytest

import slimkit as sk


def test_configs_are_reachable_by_class_name_and_frozen():
    cfg = sk.MagnitudePruningConfig(sparsity=0.5)
    assert isinstance(cfg, sk.MethodConfig) and cfg.family is sk.Family.PRUNE
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.sparsity = 0.9
    with pytest.raises(ValueError):
        sk.MagnitudePruningConfig(sparsity=0.5, no_such_field=1)
    assert callable(sk.distill)
    with pytest.raises(AttributeError):
        sk.NoSuchConfig  # noqa: B018


def test_family_verbs_check_the_family(lenet):
    with pytest.raises(TypeError, match="is not a quantization method"):
        sk.quantize_(lenet, sk.MagnitudePruningConfig(sparsity=0.5))
    with pytest.raises(TypeError, match="expected a slimkit method config"):
        sk.apply_(lenet, {"method": "magnitude"})


def test_prune_verb_works_in_place_and_really_shrinks_the_file(lenet, digits_task):
    before = sk.evaluate(lenet, digits_task, timing=False)
    out = sk.prune_(lenet, sk.MagnitudePruningConfig(sparsity=0.5, scope="global"), data=digits_task)
    assert out is lenet
    after = sk.evaluate(lenet, digits_task, timing=False)
    assert after.nonzeros < 0.55 * before.nonzeros
    assert after.bytes < 0.75 * before.bytes


def test_make_config_by_name():
    assert sk.make_config("kmeans", bits=4).bits == 4
    with pytest.raises(sk.SlimError, match="unknown method 'teleport'"):
        sk.make_config("teleport")


def test_every_config_is_importable_by_name_without_module_getattr():
    """IDEs and type checkers see the configs: plain names in `slimkit`, one scheme (`<Method>Config`)."""
    import slimkit

    assert "__getattr__" not in vars(slimkit)
    for method, cls in sk.methods().items():
        assert cls.__name__.endswith("Config"), (method, cls.__name__)
        assert getattr(slimkit, cls.__name__) is cls and cls.__name__ in slimkit.__all__, method


@pytest.mark.parametrize("old, new", [("Int8", "Int8Config"), ("GPTQ", "GPTQConfig"), ("QAT", "QATConfig"),
                                      ("MagnitudePruning", "MagnitudePruningConfig"), ("KMeansSharing", "KMeansConfig"),
                                      ("LowRank", "LowRankConfig"), ("Hashed", "HashedConfig"),
                                      ("DeepKMeans", "DeepKMeansConfig")])
def test_names_before_the_config_scheme_still_work(old, new):
    assert getattr(sk, old) is getattr(sk, new)
