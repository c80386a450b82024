"""`rtl study`: the transfer-learning study (strategies x target sizes x fine-tune modes) and its report."""
