"""The plain WebSocket transport (contract §8): RFC 6455 JSON frames, close codes, first-frame auth."""
