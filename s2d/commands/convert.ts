// `s2d convert --in model.bin --out model.safetensors`: converts a PyTorch checkpoint to
// safetensors without running any code from it (see weights/pytorch.ts). The output is
// written atomically, so an interrupted run never leaves a partial file under --out.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fileSource, writeFileAtomic } from '../../weights/node-files.ts';
import { openPytorchCheckpoint, pytorchToSafetensors } from '../../weights/pytorch.ts';
import { CheckpointError } from '../../weights/source.ts';

const USAGE = 'usage: s2d convert --in FILE.bin --out FILE.safetensors';

/** Converts the PyTorch checkpoint at `inPath` to a safetensors file at `outPath` and returns the tensor and byte counts. */
export async function convertPytorchFile(inPath: string, outPath: string): Promise<{ tensors: number; bytes: number }> {
  const source = await fileSource(inPath);
  let chunks: Uint8Array[];
  let tensors: number;
  try {
    const checkpoint = await openPytorchCheckpoint(source);
    tensors = checkpoint.tensors.size;
    chunks = pytorchToSafetensors(checkpoint);
  } finally {
    await source.close?.();
  }
  await writeFileAtomic(outPath, chunks);
  return { tensors, bytes: chunks.reduce((total, chunk) => total + chunk.byteLength, 0) };
}

export async function convertCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { in: { type: 'string' }, out: { type: 'string' } } });
  if (!values.in || !values.out) {
    process.stderr.write(`s2d convert: ${!values.in ? '--in' : '--out'} is missing; ${USAGE}\n`);
    return 2;
  }
  if (resolve(values.in) === resolve(values.out)) {
    process.stderr.write(`s2d convert: --in and --out are the same file (${values.in}); choose another --out\n`);
    return 2;
  }
  try {
    const { tensors, bytes } = await convertPytorchFile(values.in, values.out);
    process.stdout.write(`wrote ${tensors} tensors (${bytes} bytes) to ${values.out}\n`);
    return 0;
  } catch (error) {
    if (!(error instanceof CheckpointError)) throw error;
    process.stderr.write(`s2d convert: ${error.message.replace(/\s*\n\s*/g, ' ')}\n`);
    return 1;
  }
}
