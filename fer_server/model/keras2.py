"""Reading Keras 2 / tf.keras 2.x architectures with Keras 3: the config translation.

Keras 2 wrote layer configs that Keras 3 refuses (``batch_input_shape``,
dtype policies as strings, arguments that were since removed); this turns
such a config into one Keras 3's ``model_from_json`` accepts, keeping only
the arguments the Keras 3 layer takes.  ``model.files.load_model`` calls it
when Keras 3 refuses a file as it is.
"""
import logging

#: Model classes a Keras config may hold (nested models included).
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})

log = logging.getLogger(__name__)


def keras2_config_to_keras3(config):
    """Translate a Keras 2 / tf.keras 2.x model config into one Keras 3's ``model_from_json`` reads.

    ``Sequential`` (with ``batch_input_shape`` or ``input_shape`` on its
    first layer, or a leading ``InputLayer``) and ``Functional`` /
    ``Model`` configs, nested ones included.  Per layer: ``InputLayer``'s
    ``batch_input_shape`` becomes ``batch_shape``; a first layer's input
    shape becomes a leading ``InputLayer``; a dtype policy becomes its name
    (``mixed_*`` becomes float32); ``BatchNormalization``'s one-element
    ``axis`` list becomes an int; arguments the Keras 3 class does not take
    (``fused``, ``renorm=False``...) are dropped, with a warning when not
    ``None``/``False``.  The input is not modified.  Run
    ``check_safe_config`` first: classes are looked up in ``keras.layers``.

    Returns:
        A new config dict with ``module`` keys.
    """
    name, inner = config["class_name"], config["config"]
    if name == "Sequential":
        layers = inner if isinstance(inner, list) else inner.get("layers", [])
        out = []
        for i, layer in enumerate(layers):
            if layer["class_name"] in MODEL_CLASSES:
                out.append(keras2_config_to_keras3(layer))
                continue
            layer_config = dict(layer["config"])
            shape = layer_config.pop("batch_input_shape", None)
            input_shape = layer_config.pop("input_shape", None)
            if shape is None and input_shape is not None:
                shape = [None, *input_shape]
            if layer["class_name"] == "InputLayer":
                layer_config["batch_shape"] = layer_config.get("batch_shape", shape)
            elif i == 0 and shape is not None:
                out.append(_keras3_layer("InputLayer", {"batch_shape": shape, "dtype": "float32",
                                                         "name": f"{layer_config.get('name', 'layer')}_input"}))
            out.append(_keras3_layer(layer["class_name"], layer_config))
        model_name = "sequential" if isinstance(inner, list) else inner.get("name", "sequential")
        return {"module": "keras", "class_name": "Sequential", "config": {"name": model_name, "layers": out},
                "registered_name": None}
    layers = []
    for layer in inner["layers"]:
        if layer["class_name"] in MODEL_CLASSES:
            translated = keras2_config_to_keras3(layer)
        else:
            layer_config = dict(layer["config"])
            if layer["class_name"] == "InputLayer":
                layer_config["batch_shape"] = layer_config.pop("batch_input_shape", layer_config.get("batch_shape"))
            translated = _keras3_layer(layer["class_name"], layer_config)
        translated.update(name=layer.get("name", translated["config"].get("name")),
                          inbound_nodes=layer.get("inbound_nodes", []))
        layers.append(translated)
    ends = {key: inner[key][0] if len(inner.get(key, [])) == 1 and isinstance(inner[key][0], list) else inner[key]
            for key in ("input_layers", "output_layers") if key in inner}  # one input: Keras 3 wants it bare
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {**inner, **ends, "layers": layers}, "registered_name": "Functional"}


def _keras3_layer(class_name, layer_config):
    import keras

    layer_config = dict(layer_config)
    layer_config.pop("batch_input_shape", None)
    layer_config.pop("input_shape", None)
    dtype = layer_config.get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name", "float32")
    if isinstance(dtype, str) and dtype.startswith("mixed"):
        dtype = "float32"
    if dtype is not None:
        layer_config["dtype"] = dtype
    if class_name == "BatchNormalization" and isinstance(layer_config.get("axis"), list) \
            and len(layer_config["axis"]) == 1:
        layer_config["axis"] = layer_config["axis"][0]
    accepted = _accepted_arguments(getattr(keras.layers, class_name))
    for key in [k for k in layer_config if k not in accepted]:
        value = layer_config.pop(key)
        if value not in (None, False):
            log.warning("layer %s: dropping the Keras 2 argument %s=%r, which Keras 3 does not take",
                        layer_config.get("name"), key, value)
    return {"module": "keras.layers", "class_name": class_name, "config": layer_config, "registered_name": None}


def _accepted_arguments(cls):
    import inspect

    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names.update(p.name for p in inspect.signature(klass.__init__).parameters.values()
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names - {"self"}
