"""ComfyUI node adapters over trainer/. Each node module adds its classes to the mappings.

The nodes themselves (loader, dataset, crop, tagger, caption editor, train, save, load, sampler)
arrive with the nodes issue; until then the pack registers no node, and ComfyUI loads it cleanly.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
