"""TorchServe custom handler for bench/torchserve_bench.py (TorchServe's documented API: a
BaseHandler subclass with preprocess / inference / postprocess).

Each request's body is one PNG (sent raw, as TorchServe's clients usually do, or as a form
field "data"/"file"). Answer per request: the digit and its ten probabilities, the same
content as the service's /predict answer. One torch thread per worker, as the bench tunes it.
"""

import io

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics, as the model was trained with


class MnistHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)
        super().initialize(context)

    def preprocess(self, data):
        images = []
        for row in data:
            body = row.get("data") or row.get("body") or row.get("file")
            grey = Image.open(io.BytesIO(body)).convert("L")
            if grey.size != (28, 28):
                grey = grey.resize((28, 28))
            pixels = np.asarray(grey, dtype=np.float32) / 255.0
            images.append(torch.from_numpy((pixels - MEAN) / STD))
        return torch.stack(images).unsqueeze(1)

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(data).exp()

    def postprocess(self, data):
        return [{"digit": int(probs.argmax()), "probabilities": probs.tolist()} for probs in data]
