export async function startMain(_argv: string[]): Promise<void> { throw new Error("not yet"); }
