"""The model: Keras files in and out (Keras 2 and 3), the classifier and its fast
inference paths, and Grad-CAM explanations."""
