// Dangan's browser library: everything the portal and the verify page do with bytes.
export * from "./bytes.js";
export { Reader } from "./postcard.js";
export { ProofError } from "./chain.js";
export { decodeManifest, segmentCount, segments } from "./manifest.js";
export { decodeReceipt, verifyReceipt } from "./receipt.js";
export { Identity, KeyFileError, UnwrapError, parsePublicId, publicIdText } from "./identity.js";
export { TamperError, openSegment, sealSegment, openSealedStream, openSealedBytes, SEALED_MAGIC } from "./stream.js";
export * from "./delegation.js";
