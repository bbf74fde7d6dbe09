// The file access that the data layer needs, as an interface, so that the loaders run in Node
// (node-files.ts) and in a browser (an implementation over fetch) from the same code.

/** Reads whole files. `description` names the file's role in error messages ("image", "annotation file"). */
export interface FileSource {
  readBytes(path: string, description?: string): Promise<Uint8Array>;
  readText(path: string, description?: string): Promise<string>;
}

/** Joins path segments with '/', which Node and URLs both accept; an absolute `child` wins. */
export function joinPath(parent: string, child: string): string {
  if (parent === '' || child.startsWith('/')) return child;
  return `${parent.replace(/\/+$/, '')}/${child.replace(/^\.\//, '')}`;
}
