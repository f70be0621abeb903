"""Training the embedded demo recognizer: synthetic speech data, tokenizer, training, export.

Not part of the served product: these modules import the product's model and front end, never the
other way round, and need the `train` extra (espeakng-loader) only to synthesize speech.
"""
