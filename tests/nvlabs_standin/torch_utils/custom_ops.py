"""Where the real package compiles its CUDA plugins with nvcc: here it only counts the requests."""
BUILDS = []


def get_plugin(module_name, **kwargs):
    BUILDS.append(module_name)
    return None
