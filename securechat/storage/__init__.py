"""What the server keeps on disk: the ciphertext log and its paging."""
