"""Development and test tooling: local Redis, S3 and Kafka-protocol servers, and the `make run` stack."""
