"""A stand-in for NVlabs' ``torch_utils`` package, written for fastgan's tests: the module and
function names of ``torch_utils.ops`` with plain-torch bodies of fastgan's own. No NVlabs code."""
