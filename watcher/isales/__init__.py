"""The CC-iSales side: the C2 signer, the OpenAPI client and the emulator."""
