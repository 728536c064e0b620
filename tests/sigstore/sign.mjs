// Signs container image digests the way cosign does, with sigstore-js (an implementation
// independent of berth), for the signature-policy end-to-end test (tests/e2e/policy.rs):
//
// - cosign's tag scheme: the simple-signing payload claiming the digest, and its ECDSA signature
//   (node's crypto over the payload bytes, base64: what the `dev.cosignproject.cosign/signature`
//   annotation holds);
// - a Sigstore bundle v0.3 as cosign 3 attaches it: sigstore-js's DSSEBundleBuilder over an
//   in-toto statement whose subject is the digest (predicate https://sigstore.dev/cosign/sign/v1),
//   signed by a callback over node's crypto, with no witnesses (nothing is sent to Fulcio or Rekor);
// - a message-signature bundle over the simple-signing payload: sigstore-js's
//   MessageSignatureBundleBuilder (same signer, no witnesses). 4.1.1 labels such a bundle v0.2;
//   its JSON is relabelled v0.3 (for a key-signed bundle the two differ in nothing else), and
//   sigstore-js's Verifier checks it after that, against the payload.
//
// Each result is checked here before it is printed: the payload's signature with node's
// crypto.verify, the bundle with @sigstore/verify's Verifier given the public key (and refused
// under another key), so what the test pushes is what sigstore's own verifier accepts.
//
// Input: a file (the one argument) holding a JSON list of requests; output on stdout, a JSON list
// of answers, in order.
// - {key, pub, digest, reference} (the private and public key PEM files, the `sha256:<hex>` to
//   sign, the image's name) signs: {payload, signature, bundle, messageBundle}, the payload as a
//   string, its signature in base64, the DSSE bundle's JSON, the message-signature bundle's JSON.
// - {pub, bundle}, {pub, bundle, payload} (a message-signature bundle and the payload it is
//   over) or {pub, payload, signature} checks what was signed (maybe altered since):
//   {verified, why}, sigstore-js's Verifier's verdict on the bundle, node's on the payload. The
//   test compares them with berth's. Pinned for node 20 (package.json, package-lock.json);
// `npm ci` here installs them (tests/install-deps.sh does).

import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { bundleFromJSON, bundleToJSON } from '@sigstore/bundle';
import { DSSEBundleBuilder, MessageSignatureBundleBuilder } from '@sigstore/sign';
import { Verifier, toSignedEntity, toTrustMaterial } from '@sigstore/verify';

const IN_TOTO = 'application/vnd.in-toto+json';
const COSIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';
const BUNDLE_V03 = 'application/vnd.dev.sigstore.bundle.v0.3+json';

function fail(message) {
    process.stderr.write(`sign.mjs: ${message}\n`);
    process.exit(1);
}

// cosign's simple-signing payload (what `cosign sign` writes as the .sig layer).
function simpleSigning(digest, reference) {
    return JSON.stringify({
        critical: {
            identity: { 'docker-reference': reference },
            image: { 'docker-manifest-digest': digest },
            type: 'cosign container image signature',
        },
        optional: null,
    });
}

// The in-toto statement cosign 3 signs into a bundle.
function statement(digest, reference) {
    const [algorithm, hex] = digest.split(':');
    if (algorithm !== 'sha256' || !/^[0-9a-f]{64}$/.test(hex)) {
        fail(`not a sha256 digest: ${digest}`);
    }
    return JSON.stringify({
        _type: 'https://in-toto.io/Statement/v1',
        subject: [{ name: reference, digest: { sha256: hex } }],
        predicateType: COSIGN_PREDICATE,
        predicate: {},
    });
}

// A bundle signed with a key names it by a hint; the verifier looks the key up by it.
function hintOf(publicKey) {
    return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
}

function verifierFor(publicKey) {
    const root = { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] };
    const keys = () => ({ publicKey, validFor: () => true });
    // A key-signed bundle without witnesses has no log entry nor timestamp to count.
    return new Verifier(toTrustMaterial(root, keys), {
        tlogThreshold: 0,
        ctlogThreshold: 0,
        timestampThreshold: 0,
    });
}

// Whether sigstore-js's Verifier accepts `bundle` (its JSON; a message signature over
// `artifact`) under `publicKey`: null, or why not.
function bundleRefused(bundle, publicKey, artifact) {
    try {
        verifierFor(publicKey).verify(toSignedEntity(bundleFromJSON(bundle), artifact));
        return null;
    } catch (e) {
        return String(e.message || e);
    }
}

// {pub, bundle} or {pub, payload, signature}: whether the signature verifies under the key, as
// sigstore-js (the bundle) or node's crypto (the payload) judge it, and why not.
function check({ pub, bundle, payload, signature }) {
    const publicKey = createPublicKey(readFileSync(pub));
    if (bundle !== undefined) {
        const artifact = payload === undefined ? undefined : Buffer.from(payload);
        const refused = bundleRefused(bundle, publicKey, artifact);
        return { verified: refused === null, why: refused };
    }
    const ok = verify('sha256', Buffer.from(payload), publicKey, Buffer.from(signature, 'base64'));
    return { verified: ok, why: ok ? null : 'signature verification failed' };
}

async function signed({ key, pub, digest, reference }) {
    const privateKey = createPrivateKey(readFileSync(key));
    const publicKey = createPublicKey(readFileSync(pub));
    const publicPem = publicKey.export({ type: 'spki', format: 'pem' });

    const payload = simpleSigning(digest, reference);
    const signature = sign('sha256', Buffer.from(payload), privateKey);
    if (!verify('sha256', Buffer.from(payload), publicKey, signature)) {
        fail(`the payload's signature does not verify with ${pub}`);
    }

    const signer = {
        sign: async (data) => ({
            signature: sign('sha256', data, privateKey),
            key: { $case: 'publicKey', publicKey: publicPem, hint: hintOf(publicKey) },
        }),
    };
    const builder = new DSSEBundleBuilder({ signer, witnesses: [] });
    const built = await builder.create({ data: Buffer.from(statement(digest, reference)), type: IN_TOTO });
    const bundle = bundleToJSON(built);
    if (bundle.mediaType !== BUNDLE_V03) {
        fail(`sigstore-js made a bundle of type ${bundle.mediaType}, not ${BUNDLE_V03}`);
    }
    // Read back from its JSON, as a verifier receives it.
    const json = JSON.parse(JSON.stringify(bundle));
    const refused = bundleRefused(json, publicKey);
    if (refused !== null) {
        fail(`the Verifier refused the bundle under the key that signed it: ${refused}`);
    }
    const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey;
    if (bundleRefused(json, stranger) === null) {
        fail('the Verifier accepted the bundle under a key that did not sign it');
    }
    const messageBundle = await messageSigned(signer, payload, publicKey);
    return { payload, signature: signature.toString('base64'), bundle, messageBundle };
}

// A message-signature bundle over `payload` (relabelled v0.3, see above), checked by the Verifier
// against the payload under the key that signed it, and refused under another or over other bytes.
async function messageSigned(signer, payload, publicKey) {
    const builder = new MessageSignatureBundleBuilder({ signer, witnesses: [] });
    const built = bundleToJSON(await builder.create({ data: Buffer.from(payload) }));
    if (built.messageSignature === undefined || built.verificationMaterial.publicKey === undefined) {
        fail(`sigstore-js made no key-signed message-signature bundle: ${JSON.stringify(built)}`);
    }
    const json = JSON.parse(JSON.stringify({ ...built, mediaType: BUNDLE_V03 }));
    const refused = bundleRefused(json, publicKey, Buffer.from(payload));
    if (refused !== null) {
        fail(`the Verifier refused the message bundle under the key that signed it: ${refused}`);
    }
    if (bundleRefused(json, publicKey, Buffer.from(payload + ' ')) === null) {
        fail('the Verifier accepted the message bundle over other bytes');
    }
    const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey;
    if (bundleRefused(json, stranger, Buffer.from(payload)) === null) {
        fail('the Verifier accepted the message bundle under a key that did not sign it');
    }
    return json;
}

if (process.argv.length !== 3) {
    fail('usage: node sign.mjs REQUESTS.json');
}
const requests = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const out = [];
for (const r of requests) {
    out.push(r.key !== undefined ? await signed(r) : check(r));
}
process.stdout.write(JSON.stringify(out));
